"""Importing this module kills the interpreter with SIGSEGV, as a broken
native framework can (a genuine read of address 0).  Never import it in the
test process: only importcrash_backend's probe does, in a child process."""
import ctypes

ctypes.string_at(0)
