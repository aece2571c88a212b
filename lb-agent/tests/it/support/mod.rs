//! What the integration tests share: a datapath loaded per test ([`lb`]) and frames built by
//! hand ([`frame`]).

pub mod frame;
pub mod lb;
