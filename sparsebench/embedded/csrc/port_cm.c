/* Bare-metal Cortex-M port for QEMU's MPS2/MPS3 boards: vector table, reset handler (copy
 * .data, zero .bss, paint the stack, enable the FPU, call main), semihosting output and exit,
 * SysTick as the instruction clock (with -icount shift=0, one instruction = 1 ns). */
#include <stdint.h>

#include "sb_port.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, __stack_limit, __stack_top;
int main(void);

#define SB_STACK_PAINT 0x5B5B5B5Bu
#define SYST ((volatile uint32_t *)0xE000E010u)   /* CSR, RVR, CVR, CALIB */

static volatile uint32_t sb_wraps;

static int sb_semihost(int op, void *arg)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void sb_port_puts(const char *s) { sb_semihost(0x04, (void *)s); }   /* SYS_WRITE0 */

void sb_port_exit(int code)
{
    uint32_t block[2] = {0x20026u, (uint32_t)code};   /* ADP_Stopped_ApplicationExit */
    sb_semihost(0x20, block);                           /* SYS_EXIT_EXTENDED */
    for (;;) {}
}

void sb_port_init(void)
{
    SYST[0] = 0;
    SYST[1] = 0xFFFFFFu;
    SYST[2] = 0;
    sb_wraps = 0;
    SYST[0] = 7u;                         /* processor clock, interrupt on wrap, enable */
    while (SYST[2] == 0u) {}              /* the first tick loads the reload value */
}

unsigned long long sb_port_ticks(void)
{
    uint32_t w, v;
    do { w = sb_wraps; v = SYST[2]; } while (w != sb_wraps);
    return (unsigned long long)w * 0x1000000u + (0xFFFFFFu - v);
}

unsigned long sb_port_stack_used(void)
{
    uint32_t *p = &__stack_limit;
    while (p < &__stack_top && *p == SB_STACK_PAINT) ++p;
    return (unsigned long)((uint8_t *)&__stack_top - (uint8_t *)p);
}

void SysTick_Handler(void) { sb_wraps++; }

void Default_Handler(void)
{
    sb_port_puts("sb: FAULT\n");
    sb_port_exit(3);
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    volatile uint32_t *sp;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0u;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (dst = &__stack_limit; dst < (uint32_t *)sp - 16; ++dst) *dst = SB_STACK_PAINT;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);   /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    sb_port_exit(main());
}

__attribute__((section(".vectors"), used))
void (*const sb_vectors[16])(void) = {
    (void (*)(void))&__stack_top, Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler,
    Default_Handler, 0, Default_Handler, SysTick_Handler,
};

/* GCC may emit calls to these for struct copies and zeroing loops */
void *memcpy(void *d, const void *s, unsigned int n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, unsigned int n)
{
    unsigned char *dp = d;
    while (n--) *dp++ = (unsigned char)c;
    return d;
}
