/* AArch64 Linux port without libc (static, -nostdlib): raw write/exit system calls, so the
 * binary holds only the model, the kernels and this file. Run under qemu-aarch64. */
#include "sb_port.h"

int main(void);

static long sb_syscall3(long n, long a, long b, long c)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}

void sb_port_init(void) {}

void sb_port_puts(const char *s)
{
    long n = 0;
    while (s[n]) ++n;
    sb_syscall3(64, 1, (long)s, n);          /* write(1, s, n) */
}

void sb_port_exit(int code)
{
    sb_syscall3(93, code, 0, 0);             /* exit(code) */
    for (;;) {}
}

void _start(void) { sb_port_exit(main()); }

void *memcpy(void *d, const void *s, unsigned long n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, unsigned long n)
{
    unsigned char *dp = d;
    while (n--) *dp++ = (unsigned char)c;
    return d;
}
