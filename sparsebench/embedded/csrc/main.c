/* sparsebench test harness: run the model on the test vector and compare with PyTorch's output
 * (fp32 models, within SB_TOLERANCE) or with the Python integer reference (int8 models, SB_INT8
 * from sb_model.h: every output equal).
 * Hosted builds print with stdio; a board port (-DSB_PORT, sb_port.h) supplies output, a
 * timer and a stack gauge. Prints one "sb: ..." line per fact; exit code 0 = PASS. */
#include <stdint.h>

#include "sb_model.h"
#include "sb_test_vector.h"

#ifdef SB_PORT
#include "sb_port.h"
#else
#include <stdio.h>
static void sb_port_puts(const char *s) { fputs(s, stdout); }
#endif

#ifndef SB_TOLERANCE
#define SB_TOLERANCE 1e-4f
#endif

static char *sb_put_uint(char *p, unsigned long long v)
{
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + (int)(v % 10u)); v /= 10u; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

#ifndef SB_INT8
/* "<decimal> (0x<bits>)": six decimals for readability, the exact bits for machines */
static char *sb_put_float(char *p, float f)
{
    union { float f; uint32_t u; } bits;
    int i;
    bits.f = f;
    if (f != f) { *p++ = 'n'; *p++ = 'a'; *p++ = 'n'; }
    else {
        float a = f < 0.0f ? -f : f;
        if (f < 0.0f) *p++ = '-';
        if (a >= 4.0e9f) { *p++ = 'b'; *p++ = 'i'; *p++ = 'g'; }
        else {
            unsigned long long whole = (unsigned long long)a;
            unsigned long long frac = (unsigned long long)((a - (float)whole) * 1e6f + 0.5f);
            if (frac >= 1000000u) { whole += 1u; frac -= 1000000u; }
            p = sb_put_uint(p, whole);
            *p++ = '.';
            for (i = 100000; i >= 1; i /= 10) *p++ = (char)('0' + (int)(frac / i % 10u));
        }
    }
    *p++ = ' '; *p++ = '('; *p++ = '0'; *p++ = 'x';
    for (i = 28; i >= 0; i -= 4) *p++ = "0123456789abcdef"[(bits.u >> i) & 15u];
    *p++ = ')';
    return p;
}

#endif

static void sb_line(const char *key, const char *text)
{
    sb_port_puts("sb: ");
    sb_port_puts(key);
    sb_port_puts(text);
    sb_port_puts("\n");
}

#ifdef SB_INT8
/* int8 models: the outputs must equal the Python integer reference exactly */
static char *sb_put_int(char *p, long v)
{
    if (v < 0) { *p++ = '-'; v = -v; }
    return sb_put_uint(p, (unsigned long long)v);
}

int main(void)
{
    char buf[96], *p;
    int8_t *in;
    const int8_t *out;
    int i, ok;
    long mismatches = 0;
#ifdef SB_PORT_TICKS
    unsigned long long t0, t1;
#endif
#ifdef SB_PORT
    sb_port_init();
#endif
    in = sb_input();
    for (i = 0; i < SB_INPUT_SIZE; ++i) in[i] = sbt_input[i];
#ifdef SB_PORT_TICKS
    t0 = sb_port_ticks();
#endif
    out = sb_run();
#ifdef SB_PORT_TICKS
    t1 = sb_port_ticks();
#endif
    for (i = 0; i < SB_OUTPUT_SIZE; ++i) {
        if (out[i] != sbt_expected[i]) ++mismatches;
        p = sb_put_uint(buf, (unsigned long long)i);
        *p++ = ']'; *p++ = ' '; *p++ = '='; *p++ = ' ';
        p = sb_put_int(p, out[i]);
        *p = 0;
        sb_line("qoutput[", buf);
    }
    *sb_put_uint(buf, (unsigned long long)mismatches) = 0;
    sb_line("mismatches = ", buf);
#ifdef SB_PORT_TICKS
    *sb_put_uint(buf, t1 - t0) = 0;
    sb_line("ticks = ", buf);
#endif
#ifdef SB_PORT_STACK
    *sb_put_uint(buf, sb_port_stack_used()) = 0;
    sb_line("stack_used = ", buf);
#endif
    ok = mismatches == 0;
    sb_line(ok ? "PASS" : "FAIL", "");
    return ok ? 0 : 1;
}
#else
int main(void)
{
    char buf[96], *p;
    float *in, err = 0.0f;
    const float *out;
    int i, ok;
#ifdef SB_PORT_TICKS
    unsigned long long t0, t1;
#endif
#ifdef SB_PORT
    sb_port_init();
#endif
    in = sb_input();
    for (i = 0; i < SB_INPUT_SIZE; ++i) in[i] = sbt_input[i];
#ifdef SB_PORT_TICKS
    t0 = sb_port_ticks();
#endif
    out = sb_run();
#ifdef SB_PORT_TICKS
    t1 = sb_port_ticks();
#endif
    for (i = 0; i < SB_OUTPUT_SIZE; ++i) {
        float d = out[i] - sbt_expected[i];
        if (d < 0.0f) d = -d;
        if (d > err || d != d) err = d;
        p = sb_put_uint(buf, (unsigned long long)i);
        *p++ = ']'; *p++ = ' '; *p++ = '='; *p++ = ' ';
        p = sb_put_float(p, out[i]);
        *p = 0;
        sb_line("output[", buf);
    }
    *sb_put_float(buf, err) = 0;
    sb_line("max_abs_err = ", buf);
#ifdef SB_PORT_TICKS
    *sb_put_uint(buf, t1 - t0) = 0;
    sb_line("ticks = ", buf);
#endif
#ifdef SB_PORT_STACK
    *sb_put_uint(buf, sb_port_stack_used()) = 0;
    sb_line("stack_used = ", buf);
#endif
    ok = err <= SB_TOLERANCE;   /* false for NaN */
    sb_line(ok ? "PASS" : "FAIL", "");
    return ok ? 0 : 1;
}
#endif
