//! Module images as `cuModuleLoadData` and `cuLibraryLoadData` receive them: PTX text, ELF cubins, fat binaries
//! and the fat-binary wrapper. Sizing (the client must know how many bytes to ship) and classification.

pub const FATBIN_WRAPPER_MAGIC: u32 = 0x466243B1;
pub const FATBIN_MAGIC: u32 = 0xBA55ED50;
const FATBIN_HEADER_LEN: usize = 16;
const ENTRY_HEADER_MIN: usize = 64;
const FLAG_COMPRESSED_LZ4: u64 = 0x2000;
const FLAG_COMPRESSED_ZSTD: u64 = 0x8000;
/// No image is accepted above this size (the largest seen in practice, a cuSPARSELt library, is ~175 MB).
pub const MAX_IMAGE: u64 = 2 << 30;

/// How to find an image's length from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageLen {
    /// The image is exactly this many bytes.
    Exact(u64),
    /// NUL-terminated text (PTX): its length is strlen + 1.
    NulTerminated,
    /// The first bytes are a fat-binary wrapper: the real header is at the pointer it holds.
    Wrapper,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Length of the image that starts with `head` (at least its first 64 bytes, fewer only if that is all there is).
pub fn image_len(head: &[u8]) -> Result<ImageLen, &'static str> {
    match u32_at(head, 0) {
        Some(FATBIN_WRAPPER_MAGIC) => Ok(ImageLen::Wrapper),
        Some(FATBIN_MAGIC) => {
            let header_size = u16_at(head, 6).ok_or("truncated fat binary header")? as u64;
            let files_size = u64_at(head, 8).ok_or("truncated fat binary header")?;
            let total = header_size.checked_add(files_size).ok_or("fat binary size overflows")?;
            if header_size < FATBIN_HEADER_LEN as u64 || total > MAX_IMAGE {
                return Err("fat binary header announces an impossible size");
            }
            Ok(ImageLen::Exact(total))
        }
        Some(0x464c_457f) => elf_len(head).map(ImageLen::Exact),
        _ => Ok(ImageLen::NulTerminated),
    }
}

/// An ELF64 image's length: the furthest of its section-header and program-header tables.
fn elf_len(head: &[u8]) -> Result<u64, &'static str> {
    if head.get(4) != Some(&2) {
        return Err("only 64-bit ELF cubins are supported");
    }
    let phoff = u64_at(head, 0x20).ok_or("truncated ELF header")?;
    let shoff = u64_at(head, 0x28).ok_or("truncated ELF header")?;
    let phentsize = u16_at(head, 0x36).ok_or("truncated ELF header")? as u64;
    let phnum = u16_at(head, 0x38).ok_or("truncated ELF header")? as u64;
    let shentsize = u16_at(head, 0x3a).ok_or("truncated ELF header")? as u64;
    let shnum = u16_at(head, 0x3c).ok_or("truncated ELF header")? as u64;
    // Offsets come from the image: a table past 2^64 is as impossible as one past MAX_IMAGE (found by fuzzing).
    let table_end = |off: u64, entsize: u64, num: u64| entsize.checked_mul(num).and_then(|n| n.checked_add(off));
    let (Some(sections), Some(programs)) = (table_end(shoff, shentsize, shnum), table_end(phoff, phentsize, phnum))
    else {
        return Err("ELF header announces an impossible size");
    };
    let end = sections.max(programs).max(64);
    if end > MAX_IMAGE {
        return Err("ELF header announces an impossible size");
    }
    Ok(end)
}

/// What a complete image is.
#[derive(Debug)]
pub enum Image<'a> {
    Ptx(&'a str),
    FatBinary(Vec<FatbinEntry<'a>>),
    Elf,
    Invalid,
}

/// One file inside a fat binary.
#[derive(Debug)]
pub struct FatbinEntry<'a> {
    /// 1 = PTX, 2 = ELF.
    pub kind: u16,
    pub sm_version: u32,
    pub flags: u64,
    /// The entry's bytes as stored: compressed when `flags` says so (`compressed_size` bytes), else the
    /// whole payload (possibly padded with zeros).
    pub payload: &'a [u8],
    /// Size after decompression, from the entry header (0 when not compressed).
    pub uncompressed_size: u64,
}

/// Largest decompressed entry accepted (well above any cubin or PTX seen), so a hostile header cannot make
/// the server allocate without bound.
pub const MAX_DECOMPRESSED: u64 = 512 << 20;

/// Why an entry could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The entry's content is damaged or announces an impossible size.
    Corrupt(&'static str),
}

impl<'a> FatbinEntry<'a> {
    pub fn is_compressed(&self) -> bool {
        self.flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) != 0
    }

    /// The entry's content: borrowed when stored plainly, decompressed otherwise. NVIDIA's fat binaries
    /// compress each entry on its own, as one LZ4 block (flag 0x2000; the header gives the decompressed size)
    /// or one Zstandard frame (flag 0x8000).
    pub fn content(&self) -> Result<std::borrow::Cow<'a, [u8]>, EntryError> {
        use std::borrow::Cow;
        if !self.is_compressed() {
            return Ok(Cow::Borrowed(self.payload));
        }
        if self.uncompressed_size > MAX_DECOMPRESSED {
            return Err(EntryError::Corrupt("decompressed size out of bounds"));
        }
        let limit = self.uncompressed_size as usize;
        if self.flags & FLAG_COMPRESSED_LZ4 != 0 {
            let out =
                lz4_flex::block::decompress(self.payload, limit).map_err(|_| EntryError::Corrupt("bad LZ4 block"))?;
            return Ok(Cow::Owned(out));
        }
        use std::io::Read;
        let decoder = ruzstd::decoding::StreamingDecoder::new(self.payload)
            .map_err(|_| EntryError::Corrupt("bad Zstandard frame header"))?;
        let mut out = Vec::with_capacity(limit.min(64 << 20));
        // One byte more than announced reveals a lying header instead of silently truncating.
        decoder
            .take(MAX_DECOMPRESSED.min(self.uncompressed_size.max(1) + 1))
            .read_to_end(&mut out)
            .map_err(|_| EntryError::Corrupt("bad Zstandard data"))?;
        if self.uncompressed_size != 0 && out.len() as u64 != self.uncompressed_size {
            return Err(EntryError::Corrupt("Zstandard data does not match the announced size"));
        }
        Ok(Cow::Owned(out))
    }

    /// The PTX text of a PTX entry (decompressed if need be).
    pub fn ptx(&self) -> Option<String> {
        if self.kind != 1 {
            return None;
        }
        let content = self.content().ok()?;
        let end = content.iter().position(|&b| b == 0).unwrap_or(content.len());
        std::str::from_utf8(&content[..end]).ok().map(str::to_string)
    }

    /// The PTX text of an uncompressed PTX entry.
    pub fn ptx_text(&self) -> Option<&'a str> {
        if self.kind != 1 || self.is_compressed() {
            return None;
        }
        let end = self.payload.iter().position(|&b| b == 0).unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end]).ok()
    }
}

/// Classifies a complete image (as shipped by the client).
pub fn classify(image: &[u8]) -> Image<'_> {
    match u32_at(image, 0) {
        Some(FATBIN_MAGIC) => parse_fatbin(image).map(Image::FatBinary).unwrap_or(Image::Invalid),
        Some(0x464c_457f) => Image::Elf,
        _ => {
            let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
            match std::str::from_utf8(&image[..end]) {
                Ok(text) if text.contains(".version") || text.contains(".entry") => Image::Ptx(text),
                _ => Image::Invalid,
            }
        }
    }
}

// Entry header fields (64 bytes for ELF, 80 for PTX, which adds fields after these).
const ENTRY_KIND: usize = 0;
const ENTRY_HEADER_SIZE: usize = 4;
const ENTRY_PAYLOAD_SIZE: usize = 8;
const ENTRY_COMPRESSED_SIZE: usize = 16;
const ENTRY_SM_VERSION: usize = 28;
const ENTRY_FLAGS: usize = 40;
const ENTRY_UNCOMPRESSED_SIZE: usize = 56;

fn parse_fatbin(image: &[u8]) -> Option<Vec<FatbinEntry<'_>>> {
    let header_size = u16_at(image, 6)? as usize;
    let files_size = u64_at(image, 8)? as usize;
    let files = image.get(header_size..header_size.checked_add(files_size)?)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + ENTRY_HEADER_MIN <= files.len() {
        let e = &files[at..];
        let kind = u16_at(e, ENTRY_KIND)?;
        let entry_header = u32_at(e, ENTRY_HEADER_SIZE)? as usize;
        let payload_size = u32_at(e, ENTRY_PAYLOAD_SIZE)? as usize;
        let compressed_size = u32_at(e, ENTRY_COMPRESSED_SIZE)? as usize;
        let sm_version = u32_at(e, ENTRY_SM_VERSION)?;
        let flags = u64_at(e, ENTRY_FLAGS)?;
        let uncompressed_size = u64_at(e, ENTRY_UNCOMPRESSED_SIZE)?;
        if entry_header < ENTRY_HEADER_MIN {
            return None;
        }
        let compressed = flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) != 0;
        // A compressed entry's data is its first compressed_size bytes; the payload size includes padding.
        let data_len = if compressed { compressed_size } else { payload_size };
        let payload = e.get(entry_header..entry_header.checked_add(data_len)?)?;
        out.push(FatbinEntry {
            kind,
            sm_version,
            flags,
            payload,
            uncompressed_size: if compressed { uncompressed_size } else { 0 },
        });
        at = at
            .checked_add(entry_header)?
            .checked_add(payload_size.max(compressed_size))?;
    }
    Some(out)
}

/// A kernel found in a cubin: its name and parameter layout ((offset, size) in ordinal order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubinKernel {
    pub name: String,
    pub params: Vec<(u32, u32)>,
}

/// A global variable of a cubin (`__device__`/`__constant__`): name and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubinGlobal {
    pub name: String,
    pub size: u64,
}

/// One section of an ELF64 image: name offset, type, file offset, size, link, entry size.
struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    entsize: usize,
}

fn sections(elf: &[u8]) -> Result<Vec<Section>, &'static str> {
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 image");
    }
    let shoff = u64_at(elf, 0x28).ok_or("truncated ELF header")? as usize;
    let shentsize = u16_at(elf, 0x3a).ok_or("truncated ELF header")? as usize;
    let shnum = u16_at(elf, 0x3c).ok_or("truncated ELF header")? as usize;
    if shentsize < 64 {
        return Err("ELF section headers too small");
    }
    (0..shnum)
        .map(|i| {
            let h = shoff
                .checked_add(i.checked_mul(shentsize).ok_or("ELF overflow")?)
                .ok_or("ELF overflow")?;
            let s = Section {
                name: u32_at(elf, h).ok_or("truncated section header")?,
                kind: u32_at(elf, h + 4).ok_or("truncated section header")?,
                offset: u64_at(elf, h + 0x18).ok_or("truncated section header")? as usize,
                size: u64_at(elf, h + 0x20).ok_or("truncated section header")? as usize,
                link: u32_at(elf, h + 0x28).ok_or("truncated section header")?,
                entsize: u64_at(elf, h + 0x38).ok_or("truncated section header")? as usize,
            };
            Ok(s)
        })
        .collect()
}

fn section_data<'a>(elf: &'a [u8], s: &Section) -> Result<&'a [u8], &'static str> {
    const SHT_NOBITS: u32 = 8;
    if s.kind == SHT_NOBITS {
        return Ok(&[]);
    }
    elf.get(s.offset..s.offset.checked_add(s.size).ok_or("ELF overflow")?)
        .ok_or("ELF section beyond the image")
}

fn c_string(table: &[u8], at: usize) -> Option<&str> {
    let rest = table.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn section_names<'a>(elf: &'a [u8], secs: &[Section]) -> Result<Vec<&'a str>, &'static str> {
    let shstrndx = u16_at(elf, 0x3e).ok_or("truncated ELF header")? as usize;
    let table = section_data(elf, secs.get(shstrndx).ok_or("no section name table")?)?;
    Ok(secs
        .iter()
        .map(|s| c_string(table, s.name as usize).unwrap_or(""))
        .collect())
}

// .nv.info attribute records: a format byte, an attribute byte, then a 16-bit field that is unused (NVAL), holds
// one byte and a pad byte (BVAL), a 16-bit value (HVAL), or the length of the bytes that follow (SVAL). Every
// record header is 4 bytes: cuBLAS 13's cubins carry NVAL records (attribute 0x35), which a 2-byte NVAL would
// misread as the start of a record of format 0.
const EIFMT_NVAL: u8 = 0x01;
const EIFMT_BVAL: u8 = 0x02;
const EIFMT_HVAL: u8 = 0x03;
const EIFMT_SVAL: u8 = 0x04;
/// One kernel parameter: u32 index, u16 ordinal, u16 offset, u32 with the size in bits 18..32.
const EIATTR_KPARAM_INFO: u8 = 0x17;
/// Total bytes of the kernel's parameters (16-bit value).
const EIATTR_CBANK_PARAM_SIZE: u8 = 0x19;

/// The parameter layout in one `.nv.info.<kernel>` section.
fn kernel_params(info: &[u8]) -> Result<Vec<(u32, u32)>, &'static str> {
    let mut by_ordinal: Vec<(u16, u32, u32)> = Vec::new();
    let mut at = 0usize;
    while at + 2 <= info.len() {
        let (format, attr) = (info[at], info[at + 1]);
        at += 2;
        match format {
            EIFMT_NVAL | EIFMT_BVAL | EIFMT_HVAL => at += 2,
            EIFMT_SVAL => {
                let len = u16_at(info, at).ok_or("truncated .nv.info record")? as usize;
                at += 2;
                let value = info.get(at..at + len).ok_or("truncated .nv.info record")?;
                if attr == EIATTR_KPARAM_INFO {
                    let ordinal = u16_at(value, 4).ok_or("short KPARAM_INFO")?;
                    let offset = u16_at(value, 6).ok_or("short KPARAM_INFO")? as u32;
                    let size = (u32_at(value, 8).ok_or("short KPARAM_INFO")? >> 18) & 0x3fff;
                    by_ordinal.push((ordinal, offset, size));
                }
                at += len;
            }
            _ => return Err("unknown .nv.info record format"),
        }
        let _ = EIATTR_CBANK_PARAM_SIZE;
    }
    by_ordinal.sort_unstable();
    by_ordinal.dedup_by_key(|p| p.0);
    if by_ordinal.iter().enumerate().any(|(i, p)| p.0 as usize != i) {
        return Err("kernel parameter ordinals are not contiguous");
    }
    Ok(by_ordinal.into_iter().map(|(_, o, s)| (o, s)).collect())
}

/// The kernels of a cubin (ELF) with their parameter layouts, read from its `.nv.info.<kernel>` sections.
pub fn cubin_kernels(elf: &[u8]) -> Result<Vec<CubinKernel>, &'static str> {
    let secs = sections(elf)?;
    let names = section_names(elf, &secs)?;
    let mut out = Vec::new();
    for (s, name) in secs.iter().zip(&names) {
        if let Some(kernel) = name.strip_prefix(".nv.info.") {
            out.push(CubinKernel {
                name: kernel.to_string(),
                params: kernel_params(section_data(elf, s)?)?,
            });
        }
    }
    Ok(out)
}

/// The global variables of a cubin: object symbols in its `.nv.global*` and `.nv.constant*` sections other
/// than the parameter banks (`.nv.constant0.<kernel>`).
pub fn cubin_globals(elf: &[u8]) -> Result<Vec<CubinGlobal>, &'static str> {
    const SHT_SYMTAB: u32 = 2;
    const STT_OBJECT: u8 = 1;
    let secs = sections(elf)?;
    let names = section_names(elf, &secs)?;
    let mut out = Vec::new();
    for symtab in secs.iter().filter(|s| s.kind == SHT_SYMTAB) {
        let strtab = section_data(
            elf,
            secs.get(symtab.link as usize).ok_or("symbol table without strings")?,
        )?;
        let data = section_data(elf, symtab)?;
        let entsize = symtab.entsize.max(24);
        for sym in data.chunks_exact(entsize) {
            let info = sym[4];
            let shndx = u16_at(sym, 6).unwrap_or(0) as usize;
            let size = u64_at(sym, 16).unwrap_or(0);
            if info & 0xf != STT_OBJECT || size == 0 {
                continue;
            }
            let section = names.get(shndx).copied().unwrap_or("");
            let global_space = section.starts_with(".nv.global")
                || (section.starts_with(".nv.constant") && !section.starts_with(".nv.constant0"));
            if !global_space {
                continue;
            }
            if let Some(name) = c_string(strtab, u32_at(sym, 0).unwrap_or(0) as usize) {
                out.push(CubinGlobal {
                    name: name.to_string(),
                    size,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatbin_with_ptx(ptx: &str) -> Vec<u8> {
        let mut payload = ptx.as_bytes().to_vec();
        payload.push(0);
        while !payload.len().is_multiple_of(8) {
            payload.push(0);
        }
        let mut entry = vec![0u8; 64];
        entry[0..2].copy_from_slice(&1u16.to_le_bytes());
        entry[2..4].copy_from_slice(&0x101u16.to_le_bytes());
        entry[4..8].copy_from_slice(&64u32.to_le_bytes());
        entry[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        entry[28..32].copy_from_slice(&80u32.to_le_bytes());
        entry.extend_from_slice(&payload);
        let mut out = Vec::new();
        out.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(&(entry.len() as u64).to_le_bytes());
        out.extend_from_slice(&entry);
        out
    }

    #[test]
    fn an_elf_header_whose_tables_end_past_2_pow_64_is_refused() {
        // Found by the `fatbin` fuzz target: the table end overflowed (a panic with overflow checks, a small
        // wrong length without them).
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = 2;
        head[0x28..0x30].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        head[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        head[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(elf_len(&head), Err("ELF header announces an impossible size"));
    }

    #[test]
    fn sizes_and_classifies_fat_binaries() {
        let fb = fatbin_with_ptx(".version 8.0\n.entry k()\n{ ret; }");
        assert_eq!(image_len(&fb), Ok(ImageLen::Exact(fb.len() as u64)));
        match classify(&fb) {
            Image::FatBinary(entries) => {
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].sm_version, 80);
                assert!(entries[0].ptx_text().is_some_and(|t| t.contains(".entry k")));
            }
            other => panic!("not a fat binary: {other:?}"),
        }
        assert!(matches!(classify(&fb[..fb.len() - 10]), Image::Invalid));
    }

    #[test]
    fn sizes_ptx_wrappers_and_rejects_absurd_headers() {
        assert_eq!(image_len(b".version 8.0\n"), Ok(ImageLen::NulTerminated));
        assert_eq!(image_len(&FATBIN_WRAPPER_MAGIC.to_le_bytes()), Ok(ImageLen::Wrapper));
        let mut bad = FATBIN_MAGIC.to_le_bytes().to_vec();
        bad.extend_from_slice(&[1, 0, 16, 0]);
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(image_len(&bad).is_err());
        assert!(matches!(classify(b"garbage\0"), Image::Invalid));
        assert!(matches!(classify(b".version 8.0\n.entry f()\0"), Image::Ptx(_)));
    }

    // Fat binaries nvcc 13.0 made from tests/e2e/kernels/kernels.cu with every entry compressed (sm_90 SASS
    // and compute_90 PTX): `nvcc -fatbin -gencode arch=compute_90,code=sm_90 -gencode
    // arch=compute_90,code=compute_90 -Xfatbin=-compress-all [--compress-mode=speed] kernels.cu`.
    // Zstandard is nvcc's default algorithm, LZ4 its "speed" mode.
    const ZSTD: &[u8] = include_bytes!("../testdata/kernels_zstd.fatbin");
    const LZ4: &[u8] = include_bytes!("../testdata/kernels_lz4.fatbin");

    fn entries(image: &[u8]) -> Vec<FatbinEntry<'_>> {
        assert_eq!(image_len(image), Ok(ImageLen::Exact(image.len() as u64)));
        match classify(image) {
            Image::FatBinary(e) => e,
            other => panic!("not a fat binary: {other:?}"),
        }
    }

    #[test]
    fn compressed_entries_decompress_to_the_same_ptx_and_cubin() {
        let (z, l) = (entries(ZSTD), entries(LZ4));
        assert_eq!(z.len(), 2);
        assert_eq!(l.len(), 2);
        assert!(z.iter().all(|e| e.flags & FLAG_COMPRESSED_ZSTD != 0));
        assert!(l.iter().all(|e| e.flags & FLAG_COMPRESSED_LZ4 != 0));
        for kind in [1, 2] {
            let a = z.iter().find(|e| e.kind == kind).map(|e| e.content().expect("zstd"));
            let b = l.iter().find(|e| e.kind == kind).map(|e| e.content().expect("lz4"));
            assert_eq!(a, b, "entry kind {kind} differs between the two compressions");
        }
        let ptx = z.iter().find_map(|e| e.ptx()).expect("PTX entry");
        assert!(ptx.contains(".entry mixed_params"));
        let elf = z
            .iter()
            .find(|e| e.kind == 2)
            .map(|e| e.content().expect("cubin"))
            .expect("ELF entry");
        assert_eq!(&elf[..4], b"\x7fELF");
    }

    #[test]
    fn cubin_kernel_layouts_come_from_nv_info() {
        let z = entries(ZSTD);
        let elf = z
            .iter()
            .find(|e| e.kind == 2)
            .map(|e| e.content().expect("cubin"))
            .expect("ELF entry");
        let kernels = cubin_kernels(&elf).expect("kernels");
        let layout = |name: &str| {
            kernels
                .iter()
                .find(|k| k.name == name)
                .map(|k| k.params.clone())
                .unwrap_or_else(|| panic!("{name} missing from {kernels:?}"))
        };
        assert_eq!(kernels.len(), 10);
        assert_eq!(layout("vector_add"), vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
        assert_eq!(layout("saxpy"), vec![(0, 4), (8, 8), (16, 8), (24, 4)]);
        assert_eq!(layout("spin"), vec![(0, 8), (8, 8)]);
        assert_eq!(layout("empty"), vec![]);
        // char, short, int, double, float, long long, struct Pair {int; double}, pointer.
        assert_eq!(
            layout("mixed_params"),
            vec![(0, 1), (2, 2), (4, 4), (8, 8), (16, 4), (24, 8), (32, 16), (48, 8)]
        );
        let globals = cubin_globals(&elf).expect("globals");
        for (name, size) in [("g_counter", 4), ("g_table", 1024), ("c_scale", 4)] {
            assert!(
                globals.iter().any(|g| g.name == name && g.size == size),
                "{name} ({size} B) missing from {globals:?}"
            );
        }
    }

    #[test]
    fn nv_info_records_have_four_byte_headers() {
        // The head of a `.nv.info.<kernel>` section of cuBLAS 13.1's grouped cutlass GEMMs (libcublas.so.13,
        // sm_80 cubin): SVAL 0x37 (4 bytes), NVAL 0x35, SVAL 0x0a (8 bytes), HVAL 0x19, then one KPARAM_INFO
        // (ordinal 0 at offset 0, 8 bytes).
        let mut info = vec![0x04, 0x37, 0x04, 0x00, 0x7b, 0x00, 0x00, 0x00, 0x01, 0x35, 0x00, 0x00];
        info.extend_from_slice(&[0x04, 0x0a, 0x08, 0x00, 0x6d, 0, 0, 0, 0x60, 0x01, 0x18, 0x01]);
        info.extend_from_slice(&[0x03, 0x19, 0x18, 0x01]);
        info.extend_from_slice(&[0x04, 0x17, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xf0, 0x21, 0x00]);
        info.extend_from_slice(&[0x02, 0x1b, 0xff, 0x00]); // BVAL: one byte and a pad byte
        assert_eq!(kernel_params(&info), Ok(vec![(0, 8)]));
        // A record of an unknown format is refused rather than skipped with a guessed size.
        assert!(kernel_params(&[0x00, 0x00, 0x00, 0x00]).is_err());
    }

    #[test]
    fn hostile_entries_are_refused() {
        let mut image = ZSTD.to_vec();
        // Corrupt the first entry's compressed data: decompression fails cleanly.
        let header = u16_at(&image, 6).map(usize::from).unwrap_or(16);
        let entry_header = u32_at(&image, header + 4).unwrap_or(64) as usize;
        for b in &mut image[header + entry_header + 4..header + entry_header + 40] {
            *b ^= 0x5a;
        }
        let e = entries(&image);
        assert!(e[0].content().is_err());
        // An announced decompressed size beyond the bound is refused before any work.
        let mut big = ZSTD.to_vec();
        big[header + 56..header + 64].copy_from_slice(&(MAX_DECOMPRESSED + 1).to_le_bytes());
        assert!(entries(&big)[0].content().is_err());
        // Garbage in place of a cubin is an error, not a panic.
        assert!(cubin_kernels(b"\x7fELF\x02\x01garbage").is_err());
    }
}
