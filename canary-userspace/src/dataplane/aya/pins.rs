//! The bpffs side: mounting it, reading a pinned link, and removing every pin.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use super::{AyaError, ALL_MAPS, LINK_PIN};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` exists on a bpffs: when its parent is not a bpffs, one is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), AyaError> {
    let err = |source| AyaError::Bpffs {
        path: dir.to_owned(),
        source,
    };
    if dir.is_dir() && is_bpffs(dir).map_err(err)? {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| err(io::Error::other("the pin directory needs a parent")))?;
    std::fs::create_dir_all(parent).map_err(err)?;
    if !is_bpffs(parent).map_err(err)? {
        mount_bpffs(parent).map_err(err)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between libc targets"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// `mount -t bpf bpf <path>`.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `BPF_OBJ_GET` of a pin, for reading the link's `fdinfo` (aya does not expose the fd).
fn bpf_obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit, so it is zero: the kernel refuses non-zero bytes past the last field.
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = c_path(path)?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_OBJ_GET that outlives the call, and
    // `c` outlives it too.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says of a pinned XDP link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index it is attached to (0 when its interface is gone).
    pub ifindex: u32,
    /// Tag of the program attached through it (16 hex digits), the identity of its code.
    pub prog_tag: String,
    pub prog_id: u32,
}

/// Reads a pinned link's `fdinfo` (aya does not expose the fd).
pub fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
    use std::os::fd::AsRawFd as _;
    let fd = bpf_obj_get(path)?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    parse_link_fdinfo(&info)
}

/// The fields of a link's `fdinfo` text that [`LinkInfo`] holds.
pub fn parse_link_fdinfo(text: &str) -> io::Result<LinkInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let ifindex = field("ifindex:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("pinned link is not an XDP link (no ifindex in fdinfo)"))?;
    Ok(LinkInfo {
        ifindex,
        prog_tag: field("prog_tag:").unwrap_or_default(),
        prog_id: field("prog_id:").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// What [`detach`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detached {
    pub link: bool,
    pub maps: Vec<&'static str>,
}

/// Removes the pinned link (the program detaches once no process holds it) and the map pins
/// (the maps, flow table included, are freed), then the pin directory if empty. Nothing pinned:
/// nothing to do.
pub fn detach(bpffs: &Path) -> Result<Detached, AyaError> {
    let mut done = Detached::default();
    let remove = |path: PathBuf| -> Result<bool, AyaError> {
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(AyaError::Unpin { path, source }),
        }
    };
    done.link = remove(bpffs.join(LINK_PIN))?;
    for m in ALL_MAPS {
        if remove(bpffs.join(m))? {
            done.maps.push(m);
        }
    }
    // Not empty (someone else's pins) or absent: leave it.
    let _ = std::fs::remove_dir(bpffs);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_fdinfo_fields() {
        let text = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\txdp\n\
                    link_id:\t7\nprog_tag:\ta04f5eef06a7f555\nprog_id:\t42\nifindex:\t3\n";
        assert_eq!(
            parse_link_fdinfo(text).unwrap(),
            LinkInfo {
                ifindex: 3,
                prog_tag: "a04f5eef06a7f555".into(),
                prog_id: 42
            }
        );
        assert!(parse_link_fdinfo("link_type:\ttracing\n").is_err());
    }
}
