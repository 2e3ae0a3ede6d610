//! `canary_pass`: the trivial XDP program a veth peer needs to receive `XDP_TX` frames.

use std::path::Path;

use aya::programs::links::FdLink;
use aya::programs::Xdp;
use aya::Ebpf;
use canary_common::maps;

use super::{attach, object_bytes, AttachedMode, AyaError, XdpAttachMode};

/// `canary_pass` attached to an interface (the peer of a veth that receives `XDP_TX` frames
/// needs a native XDP program). Detached when dropped unless pinned with [`PassProgram::pin`].
#[derive(Debug)]
pub struct PassProgram {
    ebpf: Ebpf,
    link: Option<aya::programs::xdp::XdpLinkId>,
    pub mode: AttachedMode,
}

impl PassProgram {
    /// Loads `canary_pass` from the object (`--bpf-object` file or embedded) and attaches it.
    pub fn attach(
        object: Option<&Path>,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<PassProgram, AyaError> {
        let bytes = object_bytes(object)?;
        let mut ebpf = Ebpf::load(&bytes).map_err(|e| AyaError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::PASS_PROGRAM)
            .ok_or(AyaError::ProgramMissing(maps::PASS_PROGRAM))?
            .try_into()
            .map_err(|_| AyaError::ProgramMissing(maps::PASS_PROGRAM))?;
        program.load().map_err(|source| AyaError::ProgramLoad {
            program: maps::PASS_PROGRAM,
            source,
        })?;
        let (id, mode) = attach(program, interface, mode)?;
        Ok(PassProgram {
            ebpf,
            link: Some(id),
            mode,
        })
    }

    /// Pins the attachment at `path` (on a bpffs) so it outlives this process; remove the file
    /// to detach.
    pub fn pin(mut self, path: &Path) -> Result<(), AyaError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(maps::PASS_PROGRAM)
            .ok_or(AyaError::ProgramMissing(maps::PASS_PROGRAM))?
            .try_into()
            .map_err(|_| AyaError::ProgramMissing(maps::PASS_PROGRAM))?;
        let id = self.link.take().ok_or(AyaError::NoLink)?;
        let link = program.take_link(id).map_err(|source| AyaError::Attach {
            interface: String::new(),
            mode: "any",
            source,
        })?;
        let link: FdLink = link.try_into().map_err(|_| AyaError::NoLink)?;
        link.pin(path).map_err(|source| AyaError::Pin {
            path: path.to_owned(),
            source,
        })?;
        Ok(())
    }
}
