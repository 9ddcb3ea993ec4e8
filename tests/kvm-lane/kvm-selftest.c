/*
 * kvm-selftest: proves that /dev/kvm works inside the lane's L1 guest,
 * independently of zeroboot. It is compiled statically on the host by
 * tests/kvm-lane/run and runs first in every lane run, so that a failure
 * tells "lane broken" apart from "zeroboot broken".
 *
 * It creates a VM with one page of memory, runs real-mode code that stores
 * a word to memory, does three `out`s and `hlt`s, and checks every exit.
 * Then it creates and runs a batch of small VMs to exercise VM creation and
 * teardown. A watchdog (alarm) turns a KVM_RUN that never returns into a
 * clear failure instead of a hang.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define GUEST_ADDR 0x1000
#define PAGE 4096

static const char *stage = "start";

static void on_alarm(int sig) {
    (void)sig;
    char buf[160];
    int n = snprintf(buf, sizeof buf,
                     "kvm-selftest: FAIL: watchdog fired during '%s' (KVM_RUN never returned?)\n",
                     stage);
    if (n > 0) write(2, buf, (size_t)n);
    _exit(3);
}

static void die(const char *what) {
    fprintf(stderr, "kvm-selftest: FAIL: %s: %s (stage %s)\n", what, strerror(errno), stage);
    exit(1);
}

static void fail(const char *fmt, unsigned long a, unsigned long b) {
    fprintf(stderr, "kvm-selftest: FAIL (stage %s): ", stage);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Real-mode code loaded at GUEST_ADDR, entered with CS=0, IP=GUEST_ADDR. */
static const uint8_t code[] = {
    0xB8, 0x34, 0x12,       /* mov ax, 0x1234        */
    0xA3, 0x00, 0x18,       /* mov [0x1800], ax      */
    0xB0, 0x01,             /* mov al, 1             */
    0xE6, 0x10,             /* out 0x10, al          */
    0xFE, 0xC0,             /* inc al                */
    0xE6, 0x10,             /* out 0x10, al          */
    0xFE, 0xC0,             /* inc al                */
    0xE6, 0x10,             /* out 0x10, al          */
    0xF4,                   /* hlt                   */
};

/* Creates a VM, runs the code, checks every exit. Returns 0 on success. */
static void run_one(int kvm, int run_size, int verbose) {
    int vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
    if (vm < 0) die("KVM_CREATE_VM");

    uint8_t *mem = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap guest memory");
    memcpy(mem, code, sizeof code);

    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = GUEST_ADDR,
        .memory_size = PAGE,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = GUEST_ADDR;
    regs.rflags = 0x2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    for (unsigned expect = 1; expect <= 4; expect++) {
        stage = "KVM_RUN";
        alarm(30);
        if (ioctl(vcpu, KVM_RUN, 0UL) < 0) die("KVM_RUN");
        alarm(0);
        if (expect <= 3) {
            if (run->exit_reason != KVM_EXIT_IO)
                fail("exit %lu: expected KVM_EXIT_IO, got exit_reason %lu", expect, run->exit_reason);
            if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != 0x10 || run->io.size != 1)
                fail("exit %lu: unexpected io exit on port 0x%lx", expect, run->io.port);
            uint8_t v = *((uint8_t *)run + run->io.data_offset);
            if (v != expect) fail("out value: expected %lu, got %lu", expect, v);
            if (verbose) printf("kvm-selftest: exit %u: out 0x10, %u\n", expect, v);
        } else {
            if (run->exit_reason != KVM_EXIT_HLT)
                fail("exit %lu: expected KVM_EXIT_HLT, got exit_reason %lu", expect, run->exit_reason);
            if (verbose) printf("kvm-selftest: exit %u: hlt\n", expect);
        }
    }
    if (mem[0x800] != 0x34 || mem[0x801] != 0x12)
        fail("guest store: expected 0x1234 at 0x1800, got 0x%02lx%02lx", mem[0x801], mem[0x800]);

    munmap(run, (size_t)run_size);
    munmap(mem, PAGE);
    close(vcpu);
    close(vm);
}

int main(int argc, char **argv) {
    int batch = argc > 1 ? atoi(argv[1]) : 50;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);

    stage = "open";
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open /dev/kvm");
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0UL);
    if (api != KVM_API_VERSION) fail("KVM_GET_API_VERSION: expected %lu, got %lu", KVM_API_VERSION, api);
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0UL);
    if (run_size <= 0) die("KVM_GET_VCPU_MMAP_SIZE");
    printf("kvm-selftest: api %d, vcpu mmap size %d, max vcpus %d, immediate_exit %d\n", api, run_size,
           ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS),
           ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT));

    stage = "first VM";
    double t0 = now();
    run_one(kvm, run_size, 1);
    printf("kvm-selftest: first VM ok in %.1f ms\n", (now() - t0) * 1e3);

    stage = "batch";
    t0 = now();
    for (int i = 0; i < batch; i++) run_one(kvm, run_size, 0);
    double dt = now() - t0;
    printf("kvm-selftest: %d more VMs created, run and closed in %.1f ms (%.2f ms each; emulated, not a benchmark)\n",
           batch, dt * 1e3, batch ? dt * 1e3 / batch : 0.0);
    printf("kvm-selftest: PASS\n");
    return 0;
}
