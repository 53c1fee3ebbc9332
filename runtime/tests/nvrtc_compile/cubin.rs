//! Resources of a function read from a CUBIN (ELF64) without ptxas' log: the `.nv.info`
//! attributes `EIATTR_REGCOUNT` and `EIATTR_FRAME_SIZE` / `EIATTR_MAX_STACK_SIZE` ptxas writes
//! for every kernel. Spills live in the stack frame, so a frame of 0 bytes means spill-free; the
//! spill byte counts themselves are not recorded there and read as 0.

use tpla_runtime::cuda::nvrtc::PtxasReport;

const EIFMT_SVAL: u8 = 0x04;
const EIATTR_FRAME_SIZE: u8 = 0x11;
const EIATTR_MAX_STACK_SIZE: u8 = 0x23;
const EIATTR_REGCOUNT: u8 = 0x2f;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}
fn c_str(b: &[u8], at: usize) -> Option<&str> {
    let s = b.get(at..)?;
    std::str::from_utf8(&s[..s.iter().position(|&c| c == 0)?]).ok()
}

struct Section<'a> {
    name: &'a str,
    kind: u32,
    link: usize,
    data: &'a [u8],
}

fn sections(elf: &[u8]) -> Option<Vec<Section<'_>>> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None; // not a little-endian ELF64
    }
    let (shoff, shentsize) = (u64_at(elf, 0x28)?, u16_at(elf, 0x3a)? as usize);
    let (shnum, shstrndx) = (u16_at(elf, 0x3c)? as usize, u16_at(elf, 0x3e)? as usize);
    let raw: Vec<(u32, u32, usize, &[u8])> = (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            let (off, size) = (u64_at(elf, h + 24)?, u64_at(elf, h + 32)?);
            let kind = u32_at(elf, h + 4)?;
            // SHT_NOBITS holds no bytes in the file.
            let data = if kind == 8 {
                &[][..]
            } else {
                elf.get(off..off + size)?
            };
            Some((u32_at(elf, h)?, kind, u32_at(elf, h + 40)? as usize, data))
        })
        .collect::<Option<_>>()?;
    let names = raw.get(shstrndx)?.3;
    raw.iter()
        .map(|&(name, kind, link, data)| {
            Some(Section {
                name: c_str(names, name as usize)?,
                kind,
                link,
                data,
            })
        })
        .collect()
}

/// The report of function `name` from the CUBIN `elf`, or why it cannot be read.
pub fn report(elf: &[u8], name: &str) -> Result<PtxasReport, String> {
    let secs = sections(elf).ok_or("not a readable ELF64 CUBIN")?;
    let symtab = secs.iter().find(|s| s.kind == 2).ok_or("no symbol table")?;
    let strtab = secs.get(symtab.link).ok_or("no symbol names")?.data;
    let index = symtab
        .data
        .chunks_exact(24)
        .position(|sym| c_str(strtab, u32_at(sym, 0).unwrap_or(0) as usize) == Some(name))
        .ok_or_else(|| format!("no symbol `{name}`"))? as u32;
    let info = secs
        .iter()
        .find(|s| s.name == ".nv.info")
        .ok_or("no .nv.info section")?
        .data;
    let (mut regs, mut frame, mut stack) = (None, 0u32, 0u32);
    let mut at = 0;
    while at + 4 <= info.len() {
        let (fmt, attr) = (info[at], info[at + 1]);
        let size = if fmt == EIFMT_SVAL {
            u16_at(info, at + 2).unwrap_or(0) as usize
        } else {
            0
        };
        if fmt == EIFMT_SVAL && size == 8 && u32_at(info, at + 4) == Some(index) {
            let v = u32_at(info, at + 8).unwrap_or(0);
            match attr {
                EIATTR_REGCOUNT => regs = Some(v),
                EIATTR_FRAME_SIZE => frame = v,
                EIATTR_MAX_STACK_SIZE => stack = v,
                _ => {}
            }
        }
        at += 4 + size;
    }
    Ok(PtxasReport {
        function: name.to_string(),
        registers: regs.ok_or("no EIATTR_REGCOUNT for the kernel")?,
        stack_frame_bytes: frame.max(stack),
        spill_store_bytes: 0,
        spill_load_bytes: 0,
        static_shared_bytes: 0,
    })
}
