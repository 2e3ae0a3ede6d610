//! The balancer's own interface, as the kernel reports it in this network namespace.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// The Ethernet MAC of `interface` (`SIOCGIFHWADDR`): the `lb_mac` the XDP program balances
/// frames to and forwards them from. `None` for an interface without one (loopback, a tunnel,
/// or an all-zero address).
pub fn interface_mac(interface: &str) -> io::Result<Option<[u8; 6]>> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{interface:?} is not an interface name"),
        ));
    }
    // SAFETY: socket has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid `ifreq` (integers, arrays and a union of plain data).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name and writes `ifru_hwaddr` of a valid,
    // writable `ifreq`.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful SIOCGIFHWADDR filled `ifru_hwaddr`.
    let hwaddr = unsafe { request.ifr_ifru.ifru_hwaddr };
    if hwaddr.sa_family != libc::ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hwaddr.sa_data) {
        *dst = src.to_ne_bytes()[0];
    }
    Ok((mac != [0; 6]).then_some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_mac_and_a_bad_name_is_an_error() {
        assert_eq!(interface_mac("lo").unwrap(), None);
        assert!(interface_mac("").is_err());
        assert!(interface_mac("a-name-far-too-long").is_err());
        let e = interface_mac("cnry-no-such0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
