//! Kernel parameter layouts read from PTX text: what the emulated backend checks launches against.
//! Only `.entry` signatures are parsed; bodies are never interpreted.

use vgpu_dataplane::wire::{FunctionInfo, FUNC_ATTR_COUNT};

/// Every `.entry` of a PTX module with its parameters' (offset, size), laid out as the driver does: each
/// parameter aligned to its alignment (its size for scalars, `.align N` for byte arrays).
pub fn entries(ptx: &str) -> Result<Vec<FunctionInfo>, String> {
    let mut out = Vec::new();
    let mut rest = ptx;
    while let Some(pos) = find_entry(rest) {
        rest = &rest[pos + ".entry".len()..];
        let open = rest.find('(');
        let name_end = rest
            .find(|c: char| c == '(' || c == '{' || c == ';')
            .ok_or("unterminated .entry")?;
        let name = rest[..name_end].trim().to_string();
        if name.is_empty() {
            return Err("an .entry without a name".into());
        }
        let mut params = Vec::new();
        if open == Some(name_end) {
            let close = rest[name_end..].find(')').ok_or("unterminated parameter list")? + name_end;
            let mut offset = 0u32;
            for decl in rest[name_end + 1..close].split(',') {
                let decl = decl.trim();
                if decl.is_empty() {
                    continue;
                }
                let (size, align) = param_size(decl)?;
                offset = offset.div_ceil(align) * align;
                params.push((offset, size));
                offset += size;
            }
            rest = &rest[close..];
        }
        out.push(FunctionInfo {
            name,
            params,
            attrs: emulated_attrs(),
        });
    }
    Ok(out)
}

/// Position of the next `.entry` keyword that is a whole token.
fn find_entry(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = text[from..].find(".entry") {
        let at = from + p;
        let after = text[at + 6..].chars().next();
        if after.is_some_and(|c| c.is_whitespace()) {
            return Some(at);
        }
        from = at + 6;
    }
    None
}

/// Size and alignment of one `.param` declaration such as `.param .u64 a` or `.param .align 8 .b8 s[24]`.
fn param_size(decl: &str) -> Result<(u32, u32), String> {
    let tokens: Vec<&str> = decl.split_whitespace().collect();
    if tokens.first() != Some(&".param") {
        return Err(format!("unexpected parameter declaration '{decl}'"));
    }
    let mut align = None;
    let mut elem = None;
    let mut i = 1;
    while i < tokens.len() {
        match tokens[i] {
            ".align" => {
                align = tokens.get(i + 1).and_then(|t| t.parse::<u32>().ok());
                i += 1;
            }
            ".ptr" | ".global" | ".const" | ".local" | ".shared" => {}
            t if t.starts_with('.') => elem = Some(scalar_size(t).ok_or(format!("unknown type {t} in '{decl}'"))?),
            _ => break,
        }
        i += 1;
    }
    let elem = elem.ok_or(format!("no type in '{decl}'"))?;
    let name = tokens.last().copied().unwrap_or("");
    let count = match (name.find('['), name.find(']')) {
        (Some(a), Some(b)) if b > a + 1 => name[a + 1..b]
            .parse::<u32>()
            .map_err(|_| format!("bad array in '{decl}'"))?,
        _ => 1,
    };
    let align = align.unwrap_or(elem).max(1);
    Ok((elem * count, align))
}

fn scalar_size(t: &str) -> Option<u32> {
    Some(match t {
        ".b8" | ".u8" | ".s8" | ".pred" => 1,
        ".b16" | ".u16" | ".s16" | ".f16" | ".bf16" => 2,
        ".b32" | ".u32" | ".s32" | ".f32" | ".f16x2" | ".bf16x2" => 4,
        ".b64" | ".u64" | ".s64" | ".f64" => 8,
        ".b128" => 16,
        _ => return None,
    })
}

/// Function attributes the emulated backend reports: plausible Hopper-like values, marked in docs as emulated.
fn emulated_attrs() -> [i32; FUNC_ATTR_COUNT] {
    // MAX_THREADS_PER_BLOCK, SHARED_SIZE, CONST_SIZE, LOCAL_SIZE, NUM_REGS, PTX_VERSION, BINARY_VERSION,
    // CACHE_MODE_CA, MAX_DYNAMIC_SHARED_SIZE, PREFERRED_SHARED_CARVEOUT, CLUSTER_SIZE_MUST_BE_SET
    [1024, 0, 0, 0, 16, 80, 90, 0, 49152, -1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvcc_style_entries_with_alignment() {
        let ptx = r#"
.version 8.0
.target sm_80
.address_size 64
	// .globl	vecadd
.visible .entry vecadd(
	.param .u64 .ptr .global .align 4 vecadd_param_0,
	.param .u64 vecadd_param_1,
	.param .u32 vecadd_param_2,
	.param .align 8 .b8 vecadd_param_3[24],
	.param .u8 vecadd_param_4,
	.param .f64 vecadd_param_5
)
{ ret; }
.visible .entry empty()
{ ret; }
.entry noparens { ret; }
"#;
        let e = entries(ptx).expect("parses");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "vecadd");
        assert_eq!(e[0].params, vec![(0, 8), (8, 8), (16, 4), (24, 24), (48, 1), (56, 8)]);
        assert_eq!(e[0].args_size(), 64);
        assert_eq!(e[1].name, "empty");
        assert!(e[1].params.is_empty());
        assert_eq!(e[2].name, "noparens");
    }

    #[test]
    fn rejects_garbage_declarations() {
        assert!(entries(".entry f( .param .q99 x )").is_err());
        assert!(entries(".entry f( .param .u32 x").is_err());
        assert!(entries(".entry ( .param .u32 x )").is_err());
    }
}
