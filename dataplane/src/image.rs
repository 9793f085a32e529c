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
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
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
    let end = (shoff + shentsize * shnum).max(phoff + phentsize * phnum).max(64);
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
    pub payload: &'a [u8],
}

impl<'a> FatbinEntry<'a> {
    /// The PTX text of an uncompressed PTX entry.
    pub fn ptx_text(&self) -> Option<&'a str> {
        if self.kind != 1 || self.flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) != 0 {
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

fn parse_fatbin(image: &[u8]) -> Option<Vec<FatbinEntry<'_>>> {
    let header_size = u16_at(image, 6)? as usize;
    let files_size = u64_at(image, 8)? as usize;
    let files = image.get(header_size..header_size.checked_add(files_size)?)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + ENTRY_HEADER_MIN <= files.len() {
        let e = &files[at..];
        let kind = u16_at(e, 0)?;
        let entry_header = u32_at(e, 4)? as usize;
        let padded_payload = u64_at(e, 8)? as usize;
        let payload_size = u32_at(e, 16)? as usize;
        let sm_version = u32_at(e, 28)?;
        let flags = u64_at(e, 40)?;
        if entry_header < ENTRY_HEADER_MIN {
            return None;
        }
        let payload = e.get(entry_header..entry_header.checked_add(payload_size)?)?;
        out.push(FatbinEntry {
            kind,
            sm_version,
            flags,
            payload,
        });
        at = at
            .checked_add(entry_header)?
            .checked_add(padded_payload.max(payload_size))?;
    }
    Some(out)
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
        entry[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        entry[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
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
}
