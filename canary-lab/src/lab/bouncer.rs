//! The bouncer: the least any XDP balancer can do in the lab's place of the load balancer. It
//! rewrites every IPv4 frame's destination MAC to one fixed backend's and its source MAC to the
//! balancer's own, and sends it back out (`XDP_TX`); anything else (ARP) is passed. No parsing
//! beyond the ethertype, no maps, no choice: the ceiling of this topology for a DSR balancer.
//!
//! Hand-assembled (19 instructions) and loaded with raw `bpf(2)` like the peer pass program,
//! pinned in the lab's bpffs, and attached by `ip link set ... xdpdrv pinned`.

use std::path::PathBuf;

use super::{cmd, xdp_pass, Lab, LabError, MacAddr, Node, NETNS_IFNAME};

/// File name of the bouncer's pinned program in the lab's bpffs.
const PIN: &str = "lab_bouncer";

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
const fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    op as u64
        | ((dst as u64 | (src as u64) << 4) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

const LDXW: u8 = 0x61;
const LDXH: u8 = 0x69;
const STXW: u8 = 0x63;
const STXH: u8 = 0x6b;
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const MOV32_IMM: u8 = 0xb4;
const ADD64_IMM: u8 = 0x07;
const JGT_REG: u8 = 0x2d;
const JNE_IMM: u8 = 0x55;
const EXIT: u8 = 0x95;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const ETH_HEADER_LEN: i32 = 14;
/// 0x0800 as read by a little-endian 16-bit load of the wire bytes.
const ETHERTYPE_IPV4_LE: i32 = 0x0008;

fn word(bytes: [u8; 4]) -> i32 {
    i32::from_le_bytes(bytes)
}

fn half(bytes: [u8; 2]) -> i32 {
    i32::from(u16::from_le_bytes(bytes))
}

/// The program: `r1` is the context (`data` at 0, `data_end` at 4).
pub(super) fn instructions(backend: MacAddr, ours: MacAddr) -> [u64; 19] {
    let (d, s) = (backend.0, ours.0);
    [
        insn(LDXW, 2, 1, 0, 0),                     // 0: r2 = data
        insn(LDXW, 3, 1, 4, 0),                     // 1: r3 = data_end
        insn(MOV64_REG, 4, 2, 0, 0),                // 2: r4 = r2
        insn(ADD64_IMM, 4, 0, 0, ETH_HEADER_LEN),   // 3: r4 += 14
        insn(JGT_REG, 4, 3, 12, 0),                 // 4: if r4 > r3 goto 17 (pass)
        insn(LDXH, 5, 2, 12, 0),                    // 5: r5 = ethertype
        insn(JNE_IMM, 5, 0, 10, ETHERTYPE_IPV4_LE), // 6: if not IPv4 goto 17 (pass)
        insn(MOV32_IMM, 5, 0, 0, word([d[0], d[1], d[2], d[3]])),
        insn(STXW, 2, 5, 0, 0), // 8: destination MAC, bytes 0-3
        insn(MOV32_IMM, 5, 0, 0, half([d[4], d[5]])),
        insn(STXH, 2, 5, 4, 0), // 10: destination MAC, bytes 4-5
        insn(MOV32_IMM, 5, 0, 0, half([s[0], s[1]])),
        insn(STXH, 2, 5, 6, 0), // 12: source MAC, bytes 0-1
        insn(MOV32_IMM, 5, 0, 0, word([s[2], s[3], s[4], s[5]])),
        insn(STXW, 2, 5, 8, 0),             // 14: source MAC, bytes 2-5
        insn(MOV64_IMM, 0, 0, 0, XDP_TX),   // 15
        insn(EXIT, 0, 0, 0, 0),             // 16
        insn(MOV64_IMM, 0, 0, 0, XDP_PASS), // 17: pass
        insn(EXIT, 0, 0, 0, 0),             // 18
    ]
}

impl Lab {
    /// Attaches the bouncer (native mode) to `balancer`'s interface, sending every IPv4 frame
    /// to `backend`. The balancer must run no other XDP program there. Its pin is recorded, so
    /// teardown removes it even if [`Lab::detach_bouncer`] is never called.
    pub fn attach_bouncer(&self, balancer: &Node, backend: &Node) -> Result<(), LabError> {
        let pin = self.bouncer_pin(balancer);
        if !pin.exists() {
            self.with_record(|r| r.pins.insert(pin.clone()))?;
            let name = format!("{PIN}_{}", balancer.name);
            xdp_pass::load_and_pin(
                &instructions(backend.mac, balancer.mac),
                name.as_bytes(),
                &pin,
            )
            .map_err(|e| LabError::PeerXdp {
                ifname: format!("{} in {}", NETNS_IFNAME, balancer.netns),
                reason: e.to_string(),
            })?;
        }
        let pin_arg = pin.display().to_string();
        cmd::run(
            "ip",
            &[
                "-n",
                &balancer.netns,
                "link",
                "set",
                "dev",
                NETNS_IFNAME,
                "xdpdrv",
                "pinned",
                &pin_arg,
            ],
        )
        .map(drop)
    }

    /// Detaches the bouncer from `balancer`'s interface and removes its pin.
    pub fn detach_bouncer(&self, balancer: &Node) -> Result<(), LabError> {
        cmd::run(
            "ip",
            &[
                "-n",
                &balancer.netns,
                "link",
                "set",
                "dev",
                NETNS_IFNAME,
                "xdpdrv",
                "off",
            ],
        )?;
        let pin = self.bouncer_pin(balancer);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(LabError::PeerXdp {
                    ifname: format!("{} in {}", NETNS_IFNAME, balancer.netns),
                    reason: format!("remove {}: {e}", pin.display()),
                })
            }
        }
        self.with_record(|r| r.pins.remove(&pin))?;
        Ok(())
    }

    fn bouncer_pin(&self, balancer: &Node) -> PathBuf {
        self.plan.bpffs.join(format!("{PIN}_{}", balancer.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_registers_offsets_and_immediates() {
        let p = instructions(
            MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
        );
        // r2 = *(u32 *)(r1 + 0)
        assert_eq!(p[0].to_le_bytes(), [0x61, 0x12, 0, 0, 0, 0, 0, 0]);
        // if r4 > r3 goto +12 (to the pass exit)
        assert_eq!(p[4].to_le_bytes(), [0x2d, 0x34, 12, 0, 0, 0, 0, 0]);
        assert_eq!(4 + 1 + 12, 17);
        assert_eq!(6 + 1 + 10, 17);
        assert_eq!(p[17].to_le_bytes(), [0xb7, 0, 0, 0, 2, 0, 0, 0]);
        // The MAC words hold the wire bytes in order.
        assert_eq!(p[7].to_le_bytes()[4..], [0x02, 0x11, 0x22, 0x33]);
        assert_eq!(p[9].to_le_bytes()[4..], [0x44, 0x55, 0, 0]);
        assert_eq!(p[11].to_le_bytes()[4..], [0x02, 0xaa, 0, 0]);
        assert_eq!(p[13].to_le_bytes()[4..], [0xbb, 0xcc, 0xdd, 0xee]);
        assert_eq!(p[15].to_le_bytes(), [0xb7, 0, 0, 0, 3, 0, 0, 0]);
    }
}
