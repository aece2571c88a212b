//! Kernel side, split by concern as in katran: packet access and parsing, address families and
//! their maps, checksum-correct rewriting, and the load-balancing decision with connection
//! tracking; the TC, XDP and socket programs are thin layers over them.

pub mod affinity;
pub mod conf;
pub mod ext;
pub mod family;
pub mod flow;
pub mod frame;
pub mod hairpin;
pub mod icmp;
pub mod lb;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod reject;
pub mod sock;
pub mod tcp;
pub mod xdp;

use aya_ebpf::bindings::TC_ACT_OK;

/// What a program does with a packet it did not translate: pass it on untouched. Errors from
/// helpers (a packet shorter than its headers claim, a failed store) never turn into drops of
/// traffic we do not own.
#[inline(always)]
pub fn verdict(result: Result<i32, i64>) -> i32 {
    match result {
        Ok(action) => action,
        Err(_) => TC_ACT_OK,
    }
}
