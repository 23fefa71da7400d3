//! The bpf(2) link commands the guard uses directly: aya 0.14 cannot adopt a link descriptor
//! inherited across exec, which the USR2 hand-over needs (BPF_LINK_UPDATE on it).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type` BPF_XDP.
const BPF_XDP: u32 = 37;
/// `enum bpf_link_type` BPF_LINK_TYPE_XDP.
const BPF_LINK_TYPE_XDP: u32 = 6;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// A zeroed `union bpf_attr` (the kernel requires the unused tail to be zero).
type Attr = [u32; 32];

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, fully initialised buffer of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// BPF_LINK_CREATE for XDP on `ifindex`; the attachment lasts while the descriptor (or a
/// duplicate, e.g. in a forked worker or an exec'd successor) is open.
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr: Attr = [0; 32];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = ifindex;
    attr[2] = BPF_XDP;
    attr[3] = flags;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_UPDATE: atomically makes `link` run `prog` (no moment without a program).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: Attr = [0; 32];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The interface of an XDP link, or an error if `fd` is not one.
pub fn xdp_link_ifindex(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // struct bpf_link_info: type, id, prog_id, (pad), union { .xdp.ifindex at byte 16 }.
    let mut info = [0u32; 16];
    let mut attr: Attr = [0; 32];
    attr[0] = fd.as_raw_fd() as u32;
    attr[1] = std::mem::size_of_val(&info) as u32;
    let ptr = info.as_mut_ptr() as u64;
    attr[2] = ptr as u32;
    attr[3] = (ptr >> 32) as u32;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::other(format!(
            "not an XDP link (link type {})",
            info[0]
        )));
    }
    Ok(info[4])
}
