"""Importing this module hangs (only hangimport_backend's probe does, in a
child process that the harness kills)."""
import time

time.sleep(3600)
