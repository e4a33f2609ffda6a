/* The board port's interface to main.c (bare-metal Cortex-M or Linux without libc). */
#ifndef SB_PORT_H
#define SB_PORT_H

void sb_port_init(void);
void sb_port_puts(const char *s);
void sb_port_exit(int code);
#ifdef SB_PORT_TICKS
unsigned long long sb_port_ticks(void);
#endif
#ifdef SB_PORT_STACK
unsigned long sb_port_stack_used(void);
#endif

#endif
