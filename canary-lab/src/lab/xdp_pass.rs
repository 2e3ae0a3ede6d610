//! A native `XDP_PASS` program for the load balancer's bridge-side veth, loaded with raw `bpf(2)`.
//!
//! `XDP_TX` out of a veth reaches its peer only when the peer runs a native XDP program. The program
//! here is two instructions (`r0 = XDP_PASS; exit`), so the lab needs no eBPF toolchain. Its link
//! is pinned in the lab's bpffs: it lives until the pin is removed, the bpffs is unmounted, or the
//! veth is deleted.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Explicit, zeroed tail padding: the kernel rejects non-zero bytes past the last field.
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised repr(C) prefix of `union bpf_attr` for `cmd`
    // and its size is passed along, as bpf(2) requires; the kernel zero-extends the rest.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("bpf(2) returned a bad fd"))?;
    // SAFETY: on success these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program's instructions: `r0 = XDP_PASS; exit`.
fn instructions() -> [u64; 2] {
    let mov_r0_imm: u64 = 0xb7 | (u64::from(XDP_PASS.cast_unsigned()) << 32);
    let exit: u64 = 0x95;
    [mov_r0_imm, exit]
}

/// Load the pass program, attach it in native mode to `ifname` and pin the link at `pin`.
pub(super) fn attach(ifname: &str, pin: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;

    let c_ifname = CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(context("find interface", &io::Error::last_os_error()));
    }
    let insns = instructions();
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"lab_xpass");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| context("load program", &e))?;
    let mut link = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let link = bpf(BPF_LINK_CREATE, &mut link).map_err(|e| context("create XDP link", &e))?;
    let c_pin = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut pin_attr = ObjPinAttr {
        pathname: c_pin.as_ptr() as u64,
        bpf_fd: link.as_raw_fd().cast_unsigned(),
        ..ObjPinAttr::default()
    };
    // BPF_OBJ_PIN returns 0, not an fd.
    // SAFETY: as in `bpf`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            std::ptr::from_mut(&mut pin_attr).cast::<libc::c_void>(),
            std::mem::size_of::<ObjPinAttr>(),
        )
    };
    if ret < 0 {
        return Err(context(
            &format!("pin link at {}", pin.display()),
            &io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn context(step: &str, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{step}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_mov_r0_pass_then_exit() {
        let [mov, exit] = instructions();
        assert_eq!(mov.to_le_bytes(), [0xb7, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(exit.to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
