//! Reading the packet, for both program types: TC reads through `bpf_skb_load_bytes`, which also
//! works when headers sit in non-linear skb data; XDP reads its linear frame directly, behind
//! bounds checks the verifier can follow. Parsing (`parse`) is written once over this trait.

use aya_ebpf::programs::{TcContext, XdpContext};

/// Errno-style error of a read or write past the end of the frame.
pub const OUT_OF_BOUNDS: i64 = -14;

/// How many bytes a bounds check before reading a `T` covers: its size, but at least 2. For a
/// single byte LLVM rewrites `ptr + 1 > end` as `ptr >= end`, from which the verifier derives no
/// readable range; headers always go on past such a byte, so nothing readable is refused.
#[inline(always)]
const fn checked_len<T>() -> usize {
    let size = core::mem::size_of::<T>();
    if size < 2 { 2 } else { size }
}

/// A packet that can be read at an offset from its first (Ethernet) byte.
pub trait Frame {
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64>;
}

impl Frame for TcContext {
    /// Reads the skb's linear data directly when `T` lies in it (the usual case for headers),
    /// else through `bpf_skb_load_bytes`, which also reaches non-linear data: a helper call per
    /// header field would otherwise be most of the cost of an established flow's packet.
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        // SAFETY: `skb` is the program's context, valid for the whole run; volatile for the
        // reason given in `xdp_ptr`.
        let (start, end) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*self.skb.skb).data) as usize,
                core::ptr::read_volatile(&raw const (*self.skb.skb).data_end) as usize,
            )
        };
        if start + off + checked_len::<T>() > end {
            return TcContext::load(self, off);
        }
        // SAFETY: the check above puts the whole `T` inside the linear data; the packet has no
        // alignment guarantee, hence the unaligned read.
        Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    }
}

/// A pointer to `T` at `off` in an XDP frame, if all of it lies inside the frame.
#[inline(always)]
pub fn xdp_ptr<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, i64> {
    // Volatile reads of `xdp_md`: otherwise LLVM may hoist them out of a subprogram into its
    // callers and pass the 32-bit values in as arguments, whose zero-extension the verifier
    // refuses on packet pointers ("pointer arithmetic on pkt_end prohibited").
    // SAFETY: `ctx.ctx` is the program's context, valid for the whole run.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    // The comparison must be on packet pointers (`start + off + len` against `end`), which is
    // what the verifier turns into a known packet range.
    if start + off + checked_len::<T>() > end {
        return Err(OUT_OF_BOUNDS);
    }
    Ok((start + off) as *mut T)
}

impl Frame for XdpContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        let ptr = xdp_ptr::<T>(self, off)?;
        // SAFETY: `xdp_ptr` checked that the whole `T` lies inside the frame; the frame has no
        // alignment guarantee, hence the unaligned read.
        Ok(unsafe { core::ptr::read_unaligned(ptr) })
    }
}
