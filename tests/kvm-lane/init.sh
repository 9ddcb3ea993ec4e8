#!/bin/busybox sh
# /init of the kvm-lane L1 initramfs (assembled by tests/kvm-lane/run).
# Runs under busybox ash inside the L1 guest that QEMU TCG boots with
# emulated AMD SVM. It brings up /dev/kvm (kvm-amd, nested=1), then runs the
# plan the host wrote to /lane/plan-<group>.sh (group from zb_lane_group= on the
# kernel command line) and reports every result as a marker
# line on the serial console, which the host parses:
#   ZB-LANE-PHASE <name>                      a phase starts (used for "hung in phase X")
#   ZB-LANE-RESULT name=<n> status=<s> secs=<t>
#   ZB-LANE-BEGIN-DATA <name> / ZB-LANE-END-DATA <name>   captured stdout in between
#   ZB-LANE-DONE status=<0|1>                 last line; then the guest powers off
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
hostname kvm-lane
ip link set lo up   # tests start their servers on 127.0.0.1
ulimit -n 65536 2>/dev/null
ulimit -c 0

LANE_FAILED=0
LANE_PASSED=0

lane_now() { cut -d' ' -f1 /proc/uptime; }
lane_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

lane_done() {
    status=0
    [ "$LANE_FAILED" -eq 0 ] || status=1
    echo
    echo "ZB-LANE-SUMMARY passed=$LANE_PASSED failed=$LANE_FAILED uptime=$(lane_now)"
    echo "ZB-LANE-DONE status=$status"
    sync
    sleep 1   # let the UART drain before the machine goes away
    reboot -f
    sleep 30
}

lane_fatal() {
    echo "ZB-LANE-FATAL $*"
    LANE_FAILED=$((LANE_FAILED + 1))
    lane_done
}

# lane_record NAME STATUS T0: print the result marker and count it.
lane_record() {
    secs=$(lane_secs "$3" "$(lane_now)")
    echo
    echo "ZB-LANE-RESULT name=$1 status=$2 secs=$secs"
    if [ "$2" -eq 0 ]; then
        LANE_PASSED=$((LANE_PASSED + 1))
    else
        LANE_FAILED=$((LANE_FAILED + 1))
        if [ "$2" -eq 137 ] && [ "${secs%.*}" -ge $((LANE_CMD_TIMEOUT - 1)) ]; then
            echo "ZB-LANE-TIMEOUT name=$1 after ${LANE_CMD_TIMEOUT}s (killed)"
        fi
    fi
}

# lane_run NAME CMD ARGS...: run a command, output straight to the console.
lane_run() {
    name=$1; shift
    echo "ZB-LANE-PHASE $name"
    t0=$(lane_now)
    timeout -s KILL "$LANE_CMD_TIMEOUT" "$@"
    lane_record "$name" $? "$t0"
}

# lane_capture NAME CMD ARGS...: like lane_run, but stdout is captured and
# printed between data markers (stderr still goes to the console).
lane_capture() {
    name=$1; shift
    echo "ZB-LANE-PHASE $name"
    t0=$(lane_now)
    timeout -s KILL "$LANE_CMD_TIMEOUT" "$@" >"/tmp/lane-$name.out"
    rc=$?
    echo
    echo "ZB-LANE-BEGIN-DATA $name"
    cat "/tmp/lane-$name.out"
    echo
    echo "ZB-LANE-END-DATA $name"
    lane_record "$name" "$rc" "$t0"
}

# Heartbeat on the second serial port: the host kills QEMU when it stops (L1 frozen).
( while :; do echo "hb $(lane_now)" >/dev/ttyS1; sleep 5; done ) </dev/null >/dev/null 2>&1 &

echo "ZB-LANE-PHASE init"
echo "kvm-lane: L1 $(uname -r) up after $(lane_now) s, $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
. /lane/config

echo "ZB-LANE-PHASE modules"
for m in $LANE_MODULES; do
    args=""
    case "$m" in */kvm-amd.ko) args="nested=1" ;; esac
    insmod "$m" $args || lane_fatal "insmod $m failed"
done
[ -c /dev/kvm ] || lane_fatal "/dev/kvm missing after loading modules"
grep -qw svm /proc/cpuinfo || lane_fatal "L1 CPU has no svm flag (QEMU -cpu lacks +svm?)"
echo "kvm-lane: /dev/kvm ready: kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"

cd "$LANE_CWD" 2>/dev/null || cd /
echo "ZB-LANE-PHASE plan"
LANE_GROUP=$(sed -n 's/.*zb_lane_group=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "kvm-lane: plan group ${LANE_GROUP:-1}"
. "/lane/plan-${LANE_GROUP:-1}.sh"
lane_done
