/* Baseline init for bench/boot_overhead.py: powers the VM off at once. */
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    sync();
    reboot(RB_AUTOBOOT); /* with -no-reboot, QEMU exits */
    return 0;
}
