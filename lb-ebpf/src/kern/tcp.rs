//! The TCP header as the programs read and rewrite it (RFC 9293, 3.1): flag bits, field offsets
//! from the start of the header, and what a segment's flags mean for its flow. One place, so the
//! parser, the connection tracking and the reset all agree on it.

/// Flag bits of the TCP flags byte (the header's byte [`TCP_FLAGS_OFF`]).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets of the header fields from the start of the TCP header.
pub const TCP_SEQ_OFF: usize = 4;
pub const TCP_ACK_OFF: usize = 8;
/// Data offset (high nibble, in 32-bit words) and reserved bits; the flags byte follows.
pub const TCP_DOFF_OFF: usize = 12;
pub const TCP_FLAGS_OFF: usize = 13;
pub const TCP_WINDOW_OFF: usize = 14;
pub const TCP_CSUM_OFF: usize = 16;
pub const TCP_URG_OFF: usize = 18;

/// Length of a TCP header without options: the smallest valid data offset, in bytes.
pub const TCP_HLEN_MIN: usize = 20;
