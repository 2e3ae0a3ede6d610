//! The bouncer: the least any XDP balancer can do in the lab's place of the load balancer. It
//! rewrites an IPv4 frame's destination MAC to a backend's and its source MAC to the balancer's
//! own, and sends it back out (`XDP_TX`); anything else (ARP) is passed. No maps, no state: the
//! ceiling of this topology for a DSR balancer.
//!
//! With one backend ([`Lab::attach_bouncer`]) it parses nothing beyond the ethertype and sends
//! every IPv4 frame to that backend (19 instructions). With several
//! ([`Lab::attach_spreading_bouncer`]) it picks the backend by a stateless function of the flow,
//! the TCP source port, read right after a 20-byte IPv4 header (no IP options, as in the lab's
//! traffic): [`spread_slot`], a multiplicative hash of the port (so the even ports Linux prefers
//! for `connect` reach odd slots too) modulo the number of backends. Every packet of one
//! connection goes to the same backend. A backend named several times gets that many slots, so a
//! weighted split is a list with repeats. An IPv4 frame too short to hold the port, or not TCP,
//! goes to the first backend, as the one-backend bouncer would send it.
//!
//! Hand-assembled and loaded with raw `bpf(2)` like the peer pass program, pinned in the lab's
//! bpffs, and attached by `ip link set ... xdpdrv pinned`.

use std::path::PathBuf;

use super::{cmd, xdp_pass, Lab, LabError, MacAddr, Node, NETNS_IFNAME};

/// File name of the bouncer's pinned program in the lab's bpffs.
const PIN: &str = "lab_bouncer";
/// The most backends the spreading bouncer takes (one compare per backend in the program).
pub const MAX_BOUNCER_BACKENDS: usize = 64;

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
const fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    op as u64
        | ((dst as u64 | (src as u64) << 4) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

const LDXW: u8 = 0x61;
const LDXH: u8 = 0x69;
const LDXB: u8 = 0x71;
const STXW: u8 = 0x63;
const STXH: u8 = 0x6b;
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const MOV32_IMM: u8 = 0xb4;
const ADD64_IMM: u8 = 0x07;
const MOD64_IMM: u8 = 0x97;
const MUL32_IMM: u8 = 0x24;
const RSH32_IMM: u8 = 0x74;
/// The multiplier of [`spread_slot`]'s hash (2^32 / golden ratio, odd).
const SPREAD_MULTIPLIER: u32 = 0x9e37_79b1;
/// `BPF_ALU | BPF_END | BPF_TO_BE`: to big-endian, i.e. network to host order on little-endian.
const TO_BE: u8 = 0xdc;
const JA: u8 = 0x05;
const JGT_REG: u8 = 0x2d;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const EXIT: u8 = 0x95;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const ETH_HEADER_LEN: i32 = 14;
/// 0x0800 as read by a little-endian 16-bit load of the wire bytes.
const ETHERTYPE_IPV4_LE: i32 = 0x0008;
/// The IPv4 protocol byte: Ethernet header + 9.
const IPV4_PROTOCOL_OFFSET: i16 = 14 + 9;
const IPPROTO_TCP: i32 = 6;
/// The TCP source port after a 20-byte IPv4 header.
const TCP_SOURCE_PORT_OFFSET: i16 = 14 + 20;

fn word(bytes: [u8; 4]) -> i32 {
    i32::from_le_bytes(bytes)
}

fn half(bytes: [u8; 2]) -> i32 {
    i32::from(u16::from_le_bytes(bytes))
}

/// Jump offset from the instruction at `from` forward to the one at `to`.
fn jump(from: usize, to: usize) -> i16 {
    let off = to.checked_sub(from + 1).expect("jumps go forward");
    i16::try_from(off).expect("the program is short")
}

fn imm(n: usize) -> i32 {
    i32::try_from(n).expect("at most MAX_BOUNCER_BACKENDS")
}

/// The slot (index into the backends) of a TCP connection from `source_port` among `slots`,
/// as the spreading bouncer computes it.
pub fn spread_slot(source_port: u16, slots: usize) -> usize {
    (u32::from(source_port).wrapping_mul(SPREAD_MULTIPLIER) >> 16) as usize % slots
}

/// The program: `r1` is the context (`data` at 0, `data_end` at 4). One backend: every IPv4 frame
/// to it. Several: [`spread_slot`] of the TCP source port picks one (see the module's doc).
///
/// # Panics
/// If `backends` is empty or longer than [`MAX_BOUNCER_BACKENDS`] (the callers check).
pub(super) fn instructions(backends: &[MacAddr], ours: MacAddr) -> Vec<u64> {
    let n = backends.len();
    assert!(
        (1..=MAX_BOUNCER_BACKENDS).contains(&n),
        "1 to {MAX_BOUNCER_BACKENDS} backends"
    );
    // Layout: checks (7), the choice (several backends: 10 + one compare per backend after the
    // first), one destination block per backend (4, and a jump to the tail but for the last),
    // the tail (source MAC and XDP_TX, 6), the pass exit (2).
    let checks = 7;
    let choice = if n > 1 { 10 + (n - 1) } else { 0 };
    let blocks: Vec<usize> = (0..n).map(|i| checks + choice + 5 * i).collect();
    let tail = checks + choice + 5 * n - 1;
    let pass = tail + 6;

    let mut p = vec![
        insn(LDXW, 2, 1, 0, 0),                                // r2 = data
        insn(LDXW, 3, 1, 4, 0),                                // r3 = data_end
        insn(MOV64_REG, 4, 2, 0, 0),                           // r4 = r2
        insn(ADD64_IMM, 4, 0, 0, ETH_HEADER_LEN),              // r4 += 14
        insn(JGT_REG, 4, 3, jump(4, pass), 0),                 // if r4 > r3: pass
        insn(LDXH, 5, 2, 12, 0),                               // r5 = ethertype
        insn(JNE_IMM, 5, 0, jump(6, pass), ETHERTYPE_IPV4_LE), // not IPv4: pass
    ];
    if n > 1 {
        let first = blocks[0];
        let port_end = i32::from(TCP_SOURCE_PORT_OFFSET) + 2;
        let at = p.len();
        p.extend([
            insn(MOV64_REG, 4, 2, 0, 0),                               // r4 = r2
            insn(ADD64_IMM, 4, 0, 0, port_end),                        // r4 += 36
            insn(JGT_REG, 4, 3, jump(at + 2, first), 0), // too short: the first backend
            insn(LDXB, 5, 2, IPV4_PROTOCOL_OFFSET, 0),   // r5 = IPv4 protocol
            insn(JNE_IMM, 5, 0, jump(at + 4, first), IPPROTO_TCP), // not TCP: the first backend
            insn(LDXH, 5, 2, TCP_SOURCE_PORT_OFFSET, 0), // r5 = source port, wire order
            insn(TO_BE, 5, 0, 0, 16),                    // r5 = source port
            insn(MUL32_IMM, 5, 0, 0, SPREAD_MULTIPLIER.cast_signed()), // r5 = (u32)(r5 * multiplier)
            insn(RSH32_IMM, 5, 0, 0, 16),                              // r5 >>= 16
            insn(MOD64_IMM, 5, 0, 0, imm(n)),                          // r5 %= n
        ]);
        for (i, &block) in blocks.iter().enumerate().skip(1) {
            let at = p.len();
            p.push(insn(JEQ_IMM, 5, 0, jump(at, block), imm(i))); // r5 == i: backend i
        }
        // r5 == 0 falls through to the first backend's block.
    }
    for (i, backend) in backends.iter().enumerate() {
        let d = backend.0;
        debug_assert_eq!(p.len(), blocks[i]);
        p.extend([
            insn(MOV32_IMM, 5, 0, 0, word([d[0], d[1], d[2], d[3]])),
            insn(STXW, 2, 5, 0, 0), // destination MAC, bytes 0-3
            insn(MOV32_IMM, 5, 0, 0, half([d[4], d[5]])),
            insn(STXH, 2, 5, 4, 0), // destination MAC, bytes 4-5
        ]);
        if i + 1 < n {
            let at = p.len();
            p.push(insn(JA, 0, 0, jump(at, tail), 0));
        }
    }
    let s = ours.0;
    debug_assert_eq!(p.len(), tail);
    p.extend([
        insn(MOV32_IMM, 5, 0, 0, half([s[0], s[1]])),
        insn(STXH, 2, 5, 6, 0), // source MAC, bytes 0-1
        insn(MOV32_IMM, 5, 0, 0, word([s[2], s[3], s[4], s[5]])),
        insn(STXW, 2, 5, 8, 0), // source MAC, bytes 2-5
        insn(MOV64_IMM, 0, 0, 0, XDP_TX),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    debug_assert_eq!(p.len(), pass);
    p.extend([insn(MOV64_IMM, 0, 0, 0, XDP_PASS), insn(EXIT, 0, 0, 0, 0)]);
    p
}

impl Lab {
    /// Attaches the bouncer (native mode) to `balancer`'s interface, sending every IPv4 frame
    /// to `backend`. The balancer must run no other XDP program there. Its pin is recorded, so
    /// teardown removes it even if [`Lab::detach_bouncer`] is never called.
    pub fn attach_bouncer(&self, balancer: &Node, backend: &Node) -> Result<(), LabError> {
        self.attach(balancer, &[backend.mac], "lab_bouncer")
    }

    /// Attaches the spreading bouncer to `balancer`'s interface: each TCP connection to one of
    /// `backends` by its source port (see the module's doc), like [`Lab::attach_bouncer`]
    /// otherwise. The backends must hold the VIP on `lo`, as the lab's backends do.
    pub fn attach_spreading_bouncer<'a>(
        &self,
        balancer: &Node,
        backends: impl IntoIterator<Item = &'a Node>,
    ) -> Result<(), LabError> {
        let macs: Vec<MacAddr> = backends.into_iter().map(|b| b.mac).collect();
        if macs.is_empty() || macs.len() > MAX_BOUNCER_BACKENDS {
            return Err(LabError::Spec(format!(
                "the spreading bouncer takes 1 to {MAX_BOUNCER_BACKENDS} backends, not {}: \
                 name the lab's backends",
                macs.len()
            )));
        }
        self.attach(balancer, &macs, "lab_spread")
    }

    fn attach(&self, balancer: &Node, backends: &[MacAddr], name: &str) -> Result<(), LabError> {
        let pin = self.bouncer_pin(balancer);
        let err = |reason: String| LabError::PeerXdp {
            ifname: format!("{} in {}", NETNS_IFNAME, balancer.netns),
            reason,
        };
        // A pin left by an earlier attach may hold the other program: load this one afresh.
        remove_pin(&pin).map_err(err)?;
        self.with_record(|r| r.pins.insert(pin.clone()))?;
        let name = format!("{name}_{}", balancer.name);
        xdp_pass::load_and_pin(&instructions(backends, balancer.mac), name.as_bytes(), &pin)
            .map_err(|e| err(e.to_string()))?;
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
        remove_pin(&pin).map_err(|reason| LabError::PeerXdp {
            ifname: format!("{} in {}", NETNS_IFNAME, balancer.netns),
            reason,
        })?;
        self.with_record(|r| r.pins.remove(&pin))?;
        Ok(())
    }

    fn bouncer_pin(&self, balancer: &Node) -> PathBuf {
        self.plan.bpffs.join(format!("{PIN}_{}", balancer.name))
    }
}

/// Removes a bouncer's pin; one already gone is fine.
fn remove_pin(pin: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", pin.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);

    fn backend(i: u8) -> MacAddr {
        MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, i])
    }

    /// Runs `program` on `frame` with the subset of eBPF the builder emits, as the kernel would
    /// (little-endian); returns the action and the frame as left by the program. Panics on an
    /// access outside the frame (which the verifier would refuse).
    fn run(program: &[u64], frame: &mut [u8]) -> i32 {
        const DATA: u64 = 0x1000;
        let mut r = [0u64; 11];
        r[1] = u64::MAX; // the context
        let mut pc = 0;
        loop {
            let i = program[pc];
            let (op, dst, src) = (i as u8, (i >> 8) as usize & 0xf, (i >> 12) as usize & 0xf);
            let off = ((i >> 16) as u16).cast_signed();
            let imm = ((i >> 32) as u32).cast_signed();
            let at = |base: u64, len: usize| {
                let a = usize::try_from(base.wrapping_add(off as u64) - DATA).unwrap();
                assert!(
                    a + len <= frame.len(),
                    "access at {a}+{len} outside the frame"
                );
                a
            };
            pc += 1;
            match op {
                LDXW if r[src] == u64::MAX => {
                    r[dst] = DATA + if off == 0 { 0 } else { frame.len() as u64 }
                }
                LDXH => {
                    let a = at(r[src], 2);
                    r[dst] = u64::from(u16::from_le_bytes([frame[a], frame[a + 1]]));
                }
                LDXB => r[dst] = u64::from(frame[at(r[src], 1)]),
                STXW => {
                    let a = at(r[dst], 4);
                    frame[a..a + 4].copy_from_slice(&(r[src] as u32).to_le_bytes());
                }
                STXH => {
                    let a = at(r[dst], 2);
                    frame[a..a + 2].copy_from_slice(&(r[src] as u16).to_le_bytes());
                }
                MOV64_REG => r[dst] = r[src],
                MOV64_IMM => r[dst] = imm as i64 as u64,
                MOV32_IMM => r[dst] = u64::from(imm as u32),
                ADD64_IMM => r[dst] = r[dst].wrapping_add(imm as i64 as u64),
                MOD64_IMM => r[dst] %= imm as u64,
                MUL32_IMM => r[dst] = u64::from((r[dst] as u32).wrapping_mul(imm as u32)),
                RSH32_IMM => r[dst] = u64::from((r[dst] as u32) >> imm),
                TO_BE => {
                    assert_eq!(imm, 16);
                    r[dst] = u64::from((r[dst] as u16).swap_bytes());
                }
                JA => pc = pc.checked_add_signed(off.into()).unwrap(),
                JGT_REG | JEQ_IMM | JNE_IMM => {
                    let taken = match op {
                        JGT_REG => r[dst] > r[src],
                        JEQ_IMM => r[dst] == imm as i64 as u64,
                        _ => r[dst] != imm as i64 as u64,
                    };
                    if taken {
                        pc = pc.checked_add_signed(off.into()).unwrap();
                    }
                }
                EXIT => return r[0] as i32,
                _ => panic!("opcode {op:#x} at {}", pc - 1),
            }
        }
    }

    /// An Ethernet + IPv4 (no options) + TCP frame from `source_port`.
    fn tcp_frame(source_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[34..36].copy_from_slice(&source_port.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f
    }

    /// The destination MAC the program left, as a backend index (`None`: unchanged).
    fn chosen(frame: &[u8], n: u8) -> Option<u8> {
        (0..n).find(|&i| frame[..6] == backend(i).0)
    }

    #[test]
    fn instructions_encode_registers_offsets_and_immediates() {
        let p = instructions(&[MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55])], OURS);
        assert_eq!(p.len(), 19);
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

    #[test]
    fn one_backend_takes_every_ipv4_frame_and_passes_the_rest() {
        let p = instructions(&[backend(0)], OURS);
        let mut tcp = tcp_frame(40_001);
        assert_eq!(run(&p, &mut tcp), XDP_TX);
        assert_eq!(chosen(&tcp, 1), Some(0));
        assert_eq!(tcp[6..12], OURS.0);
        // Not TCP, and shorter than a TCP header: still IPv4, still bounced.
        let mut udp = tcp_frame(40_001);
        udp[23] = 17;
        assert_eq!(run(&p, &mut udp), XDP_TX);
        let mut short = tcp_frame(1)[..20].to_vec();
        assert_eq!(run(&p, &mut short), XDP_TX);
        assert_eq!(chosen(&short, 1), Some(0));
        let mut arp = tcp_frame(1);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(run(&p, &mut arp), XDP_PASS);
        assert_eq!(run(&p, &mut arp[..13]), XDP_PASS);
    }

    #[test]
    fn several_backends_split_by_a_hash_of_the_source_port() {
        for n in [2u8, 3, 5, 64] {
            let macs: Vec<MacAddr> = (0..n).map(backend).collect();
            let p = instructions(&macs, OURS);
            let mut seen = vec![0u32; usize::from(n)];
            for port in (0..=u16::MAX)
                .step_by(7)
                .chain([0, 1, 255, 256, 40_000, u16::MAX])
            {
                let mut f = tcp_frame(port);
                assert_eq!(run(&p, &mut f), XDP_TX, "port {port}");
                let want = spread_slot(port, n.into()) as u8;
                assert_eq!(chosen(&f, n), Some(want), "port {port} of {n} backends");
                assert_eq!(f[6..12], OURS.0);
                // Every packet of the connection: the same backend.
                let mut again = tcp_frame(port);
                again[47] = 0x10; // an ACK instead of whatever came first
                run(&p, &mut again);
                assert_eq!(again[..6], f[..6]);
                seen[usize::from(want)] += 1;
            }
            assert!(seen.iter().all(|&c| c > 0), "{n} backends: {seen:?}");
            // Not TCP, or too short for the port: the first backend.
            let mut udp = tcp_frame(3);
            udp[23] = 17;
            assert_eq!(run(&p, &mut udp), XDP_TX);
            assert_eq!(chosen(&udp, n), Some(0));
            let mut short = tcp_frame(3)[..35].to_vec();
            assert_eq!(run(&p, &mut short), XDP_TX);
            assert_eq!(chosen(&short, n), Some(0));
            // Not IPv4: passed, untouched.
            let mut arp = tcp_frame(3);
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            let before = arp.clone();
            assert_eq!(run(&p, &mut arp), XDP_PASS);
            assert_eq!(arp, before);
        }
    }

    #[test]
    fn one_backend_program_is_the_several_backends_program_without_the_choice() {
        let one = instructions(&[backend(0)], OURS);
        let five = instructions(&(0..5).map(backend).collect::<Vec<_>>(), OURS);
        // checks, choice (10 + 4 compares), 4 blocks of 5, the last of 4, tail, pass.
        assert_eq!(five.len(), 7 + 14 + 4 * 5 + 4 + 6 + 2);
        assert_eq!(one[..4], five[..4]);
        assert_eq!(one[one.len() - 8..], five[five.len() - 8..]);
    }

    #[test]
    fn spread_slot_reaches_every_slot_from_even_ports_alone() {
        // Linux hands `connect` even ports first: a plain modulo of an even count would skip
        // the odd slots.
        for slots in [2, 5, 20] {
            let mut seen = vec![0u32; slots];
            for port in (32_768..61_000u16).step_by(2) {
                seen[spread_slot(port, slots)] += 1;
            }
            let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
            assert!(
                f64::from(*lo) > 0.9 * f64::from(*hi),
                "{slots} slots: {seen:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "backends")]
    fn no_backend_is_refused() {
        instructions(&[], OURS);
    }
}
