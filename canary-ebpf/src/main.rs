//! The canary XDP data plane.
//!
//! `canary` splits each service's new flows between its stable and canary backend groups by the
//! bucket rule (`canary_common::choose`), pins established flows to their backend through an
//! LRU flow table that only a flow's first packet may enter (a pure TCP SYN, a UDP datagram;
//! the flood guard caps how many per second), forwards ICMP errors to the flow they are about,
//! and forwards by direct server return (MAC rewrite, `XDP_TX`) only frames addressed to the
//! balancer's MAC, or for `ipip` services by IP-in-IP to the next hop the kernel's FIB names
//! (`tunnel`). `canary_pass` only returns `XDP_PASS`.
//!
//! Every packet ends in exactly one terminal outcome (`Counter::is_outcome`), counted here in the
//! entry point so no path can forget it or count it twice. No path returns `XDP_ABORTED`.
#![no_std]
#![no_main]
// Everything is inlined into the two programs: no BPF-to-BPF calls, and the verifier sees each
// bounds check next to the access it guards.
#![allow(clippy::inline_always, reason = "see above")]

mod balancer;
mod decap;
mod maps;
mod packet;
mod too_big;
mod tunnel;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use canary_common::Counter;

use crate::packet::Packet;

/// The balancer.
#[xdp]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro fixes the signature"
)]
pub fn canary(ctx: XdpContext) -> u32 {
    let (outcome, action) = match balancer::try_canary(&Packet::new(&ctx)) {
        Ok(forwarded) => forwarded,
        Err(outcome) => (outcome, action_of(outcome)),
    };
    maps::count(outcome);
    action
}

/// Does nothing: attached to veth peers in labs (`XDP_TX` needs a program on the peer) and the
/// floor of the per-packet benchmark.
#[xdp]
pub fn canary_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Strips IP-in-IP (IPv4 in IPv4, IPv6 in IPv6) and passes the inner packet: on backends of
/// `ipip` services whose kernel has no tunnel modules (the lab's). Everything else passes.
#[xdp]
#[allow(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro fixes the signature"
)]
pub fn canary_decap(ctx: XdpContext) -> u32 {
    let _ = decap::decapsulate(&Packet::new(&ctx));
    xdp_action::XDP_PASS
}

/// The XDP action of a terminal outcome.
#[inline(always)]
fn action_of(outcome: Counter) -> u32 {
    match outcome {
        // `TxIcmpTooBig`: the frame was rewritten into an ICMP answer to its sender.
        Counter::Tx | Counter::TxFloodGuard | Counter::TxIcmpTooBig => xdp_action::XDP_TX,
        Counter::DropMalformed
        | Counter::DropFragment
        | Counter::DropIpv6Extensions
        | Counter::DropNoBackend
        | Counter::DropTunnelNoRoute
        | Counter::DropTunnelTooBig => xdp_action::XDP_DROP,
        // The pass outcomes, and (never produced as an outcome) the event counters: passing
        // is the harmless default.
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the code has no panicking paths (no overflow checks,
    // no variable indexing), and the verifier would reject this loop if one were linked in.
    loop {}
}
