//! Two-instruction BPF programs loaded with raw `bpf(2)` calls, where a test or benchmark needs
//! a program that is not the load balancer's: the floor of the per-packet benchmark, and the
//! pass-through XDP program on the LAN side of the two-node topology's veth devices (XDP can only
//! send frames into a veth whose peer runs an XDP program).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `enum bpf_cmd` (`linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_prog_type`.
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE` (`linux/if_link.h`): native mode.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_PASS` (`enum xdp_action`).
pub const XDP_PASS: u32 = 2;

/// The first fields of the `BPF_PROG_LOAD` member of `union bpf_attr`; the kernel zero-extends
/// a shorter attr.
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
}

/// The first fields of the `BPF_LINK_CREATE` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a prefix of the command's member of `union bpf_attr`, passed with its
    // size; whatever it points to outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = retval; exit` as a program of `prog_type`, named `name` (at most 15 bytes).
pub fn load_return_program(prog_type: u32, retval: u32, name: &str) -> io::Result<OwnedFd> {
    // struct bpf_insn, little endian: BPF_ALU64|BPF_MOV|BPF_K (0xb7) r0, imm; BPF_JMP|BPF_EXIT.
    let mut mov = [0xb7, 0, 0, 0, 0, 0, 0, 0];
    mov[4..].copy_from_slice(&retval.to_le_bytes());
    let insns: [u64; 2] = [u64::from_le_bytes(mov), 0x95];
    let license = c"GPL";
    let mut prog_name = [0_u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// Attaches an XDP program in native mode to device `ifindex` of the calling thread's network
/// namespace; it stays attached while the returned link fd is open.
pub fn attach_xdp(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// `enum bpf_cmd`: BPF_PROG_TEST_RUN.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Test-run flag (Linux 6.11): the kernel sets CHECKSUM_COMPLETE with `skb->csum` computed over
/// the packet, and after the run compares it with a fresh sum of the packet (EBADMSG when the
/// program left them out of step).
pub const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;

/// The `test` member of `union bpf_attr` (`linux/bpf.h`), tail padding spelled out.
#[repr(C)]
#[derive(Default)]
struct ProgTestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one BPF_PROG_TEST_RUN returned.
pub struct TestRun {
    /// The program's return value (its verdict).
    pub retval: u32,
    /// The kernel's own measure of one run, ns (averaged over the repetitions).
    pub duration_ns: u32,
    /// The packet as the program left it.
    pub out: Vec<u8>,
}

/// BPF_PROG_TEST_RUN by hand, for what aya's `test_run` cannot say: the floor program, which is
/// not an aya program, and test-run flags such as [`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`].
/// `out_len` must exceed any frame the program can leave.
pub fn test_run(
    prog_fd: i32,
    frame: &[u8],
    repeat: u32,
    flags: u32,
    out_len: usize,
) -> io::Result<TestRun> {
    let mut out = vec![0_u8; out_len];
    let too_long = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let mut attr = ProgTestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: u32::try_from(frame.len()).map_err(too_long)?,
        data_size_out: u32::try_from(out.len()).map_err(too_long)?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        flags,
        ..ProgTestRunAttr::default()
    };
    // SAFETY: `attr` is the `test` member of `union bpf_attr`, passed with its size; the buffers
    // it points to outlive the call and have the sizes it gives.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut ProgTestRunAttr,
            std::mem::size_of::<ProgTestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
        out,
    })
}
