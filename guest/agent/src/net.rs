//! Bringing the guest's network up when the host asks ([`NetUp`]): load the
//! link's kernel modules from the image, find or make the interface, give it
//! the host's address, route and resolver.
//!
//! Nothing of this happens at boot. A template has no network interface at
//! all (only the modules sit in the image), so a sandbox without network is
//! exactly what it was before networking existed; the host sends `NetUp`
//! before the first request of a sandbox that has network.
//!
//! The interface is configured with the classic ioctls (address, netmask,
//! MTU, flags, a default route), which need no netlink code; IPv6 is turned
//! off on it, since the host side carries IPv4 only.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use zeroboot_proto::{
    AgentErrorCode, NET_MODULE_DIR, NetLink, NetUp, TAP_NET_MODULES, VIRTIO_NET_MODULES,
    module_depends,
};

use crate::frames::Failure;

/// The kernel's `struct rtentry` (the libc crate has none for glibc).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// The network once up.
pub struct Net {
    /// For the TAP link, the device whose frames the agent carries
    /// (`None` for virtio, where the kernel moves frames itself).
    pub tap: Option<Tap>,
}

/// A TAP device, non-blocking.
pub struct Tap {
    /// The device.
    pub dev: File,
    /// Its largest frame (Ethernet header and MTU).
    pub frame_max: usize,
}

fn fail(what: &str, e: io::Error) -> Failure {
    Failure::new(AgentErrorCode::Io, format!("network setup: {what}: {e}"))
}

/// Loads `name` from [`NET_MODULE_DIR`], after the modules it depends on;
/// one already loaded is fine.
fn load_module(name: &str, depth: usize) -> io::Result<()> {
    if depth > 8 {
        return Err(io::Error::other("module dependencies nest too deep"));
    }
    let ko = std::fs::read(format!("{NET_MODULE_DIR}/{name}.ko"))?;
    for dep in module_depends(&ko) {
        let dep = std::str::from_utf8(dep).map_err(io::Error::other)?;
        load_module(dep, depth + 1)
            .map_err(|e| io::Error::new(e.kind(), format!("{dep} (for {name}): {e}")))?;
    }
    let params = c"";
    // SAFETY: init_module reads `ko.len()` bytes of the module image and a
    // NUL-terminated parameter string; neither is retained after the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            ko.as_ptr(),
            ko.len(),
            params.as_ptr(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(e),
        },
    }
}

/// An `ifreq` naming `ifname`.
fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        return Err(io::Error::other("interface name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the address by its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// `ioctl(fd, request, arg)`, for the socket and TAP requests here.
///
/// # Safety
/// `arg` must be the structure `request` expects, valid for the call.
unsafe fn ioctl<T>(fd: &impl AsRawFd, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: the caller passes the structure this request reads or writes.
    match unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A datagram socket to configure interfaces through.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and belongs to nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `flags` on interface `ifname`.
fn set_up(sock: &OwnedFd, ifname: &str) -> io::Result<()> {
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFFLAGS fills the ifreq's flags.
    unsafe { ioctl(sock, libc::SIOCGIFFLAGS, &mut req) }?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS just set.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq's flags.
    unsafe { ioctl(sock, libc::SIOCSIFFLAGS, &mut req) }
}

/// Creates TAP device `ifname` without packet information (bare Ethernet frames).
fn open_tap(ifname: &str) -> io::Result<File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq's name and flags.
    unsafe { ioctl(&tun, libc::TUNSETIFF as libc::c_ulong, &mut req) }?;
    Ok(tun)
}

/// The interface whose MAC is `mac` (the virtio device's, from its config).
fn interface_with_mac(mac: [u8; 6]) -> io::Result<String> {
    let want = mac.map(|b| format!("{b:02x}")).join(":");
    for entry in std::fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim() == want {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::other(format!("no interface has MAC {want}")))
}

/// Configures `ifname` as `req` says and brings it and `lo` up.
fn configure(ifname: &str, req: &NetUp) -> Result<(), Failure> {
    let sock = control_socket().map_err(|e| fail("socket", e))?;
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    std::fs::write(&ipv6, "1").map_err(|e| fail(&ipv6, e))?;
    let mut r = ifreq(ifname).map_err(|e| fail(ifname, e))?;
    r.ifr_ifru.ifru_mtu = req.mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the ifreq's MTU.
    unsafe { ioctl(&sock, libc::SIOCSIFMTU, &mut r) }.map_err(|e| fail("MTU", e))?;
    if req.link == NetLink::TapMailbox {
        let mut r = ifreq(ifname).map_err(|e| fail(ifname, e))?;
        let mut hw: libc::sockaddr = sockaddr_in([0; 4]);
        hw.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in hw.sa_data.iter_mut().zip(req.mac) {
            *d = s as libc::c_char;
        }
        r.ifr_ifru.ifru_hwaddr = hw;
        // SAFETY: SIOCSIFHWADDR reads the ifreq's hardware address.
        unsafe { ioctl(&sock, libc::SIOCSIFHWADDR, &mut r) }.map_err(|e| fail("MAC", e))?;
    }
    let mut r = ifreq(ifname).map_err(|e| fail(ifname, e))?;
    r.ifr_ifru.ifru_addr = sockaddr_in(req.addr);
    // SAFETY: SIOCSIFADDR reads the ifreq's address.
    unsafe { ioctl(&sock, libc::SIOCSIFADDR, &mut r) }.map_err(|e| fail("address", e))?;
    let mask = u32::MAX
        .checked_shl(32 - req.prefix_len)
        .unwrap_or(0)
        .to_be_bytes();
    r.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    // SAFETY: SIOCSIFNETMASK reads the ifreq's netmask.
    unsafe { ioctl(&sock, libc::SIOCSIFNETMASK, &mut r) }.map_err(|e| fail("netmask", e))?;
    set_up(&sock, ifname).map_err(|e| fail("link up", e))?;
    set_up(&sock, "lo").map_err(|e| fail("loopback up", e))?;
    let mut route = RtEntry {
        pad1: 0,
        dst: sockaddr_in([0; 4]),
        gateway: sockaddr_in(req.gateway),
        genmask: sockaddr_in([0; 4]),
        flags: libc::RTF_UP | libc::RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: std::ptr::null_mut(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a struct rtentry, which RtEntry mirrors.
    match unsafe { ioctl(&sock, libc::SIOCADDRT, &mut route) } {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(fail("default route", e)),
        _ => {}
    }
    let [a, b, c, d] = req.dns;
    std::fs::create_dir_all("/etc").map_err(|e| fail("/etc", e))?;
    std::fs::write("/etc/resolv.conf", format!("nameserver {a}.{b}.{c}.{d}\n"))
        .map_err(|e| fail("/etc/resolv.conf", e))
}

/// Brings the network up as `req` says.
pub fn up(req: &NetUp) -> Result<Net, Failure> {
    let modules = match req.link {
        NetLink::VirtioMmio => VIRTIO_NET_MODULES,
        NetLink::TapMailbox => TAP_NET_MODULES,
    };
    for m in modules {
        load_module(m, 0).map_err(|e| fail(&format!("module {m}"), e))?;
    }
    let (ifname, tap) = match req.link {
        NetLink::VirtioMmio => (
            interface_with_mac(req.mac).map_err(|e| fail("virtio-net", e))?,
            None,
        ),
        NetLink::TapMailbox => {
            let name = "tap0".to_string();
            let dev = open_tap(&name).map_err(|e| fail("TAP device", e))?;
            crate::sys::set_nonblocking(dev.as_fd()).map_err(|e| fail("TAP device", e))?;
            let frame_max = 14 + req.mtu as usize;
            (name, Some(Tap { dev, frame_max }))
        }
    };
    configure(&ifname, req)?;
    Ok(Net { tap })
}
