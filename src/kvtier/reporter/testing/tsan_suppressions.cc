// ThreadSanitizer suppressions for the reporter's tests, which run ZeroMQ.
//
// Debian's libzmq is not instrumented: its lock-free pipes between a socket's user thread and the
// ZMQ I/O thread are invisible to TSan, which then reports the message copies on either side as
// races. Ignore what libzmq does internally; races in our code around it are still reported.
#if defined(KVT_TSAN)
extern "C" const char* __tsan_default_suppressions() { return "called_from_lib:libzmq.so\n"; }
#endif
