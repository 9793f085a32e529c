//! Kernel parameter layouts read from PTX text: what the emulated backend checks launches against.
//! Only `.entry` signatures are parsed; bodies are never interpreted.

use vgpu_dataplane::wire::{FunctionInfo, FUNC_ATTR_COUNT, MAX_ARGS};

/// Every `.entry` of a PTX module with its parameters' (offset, size), laid out as the driver does: each
/// parameter aligned to its alignment (its size for scalars, `.align N` for byte arrays).
pub fn entries(ptx: &str) -> Result<Vec<FunctionInfo>, String> {
    let mut out = Vec::new();
    let mut attrs = emulated_attrs();
    if let Some(v) = target_version(ptx) {
        // PTX_VERSION: the virtual architecture the code was written for (CUB picks its tuning policy by
        // it, and fails with cudaErrorInvalidDeviceFunction when it matches no architecture it was built for).
        attrs[5] = v;
    }
    let mut rest = ptx;
    while let Some(pos) = find_entry(rest) {
        rest = &rest[pos + ".entry".len()..];
        let open = rest.find('(');
        let name_end = rest.find(['(', '{', ';']).ok_or("unterminated .entry")?;
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
                // Parameters past the argument buffer could never be passed (the driver's own limit is lower);
                // a table holding them would be refused by the client (found by fuzzing).
                let start = offset.div_ceil(align.max(1)).checked_mul(align.max(1));
                let end = start
                    .and_then(|s| s.checked_add(size))
                    .filter(|&e| e as usize <= MAX_ARGS);
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(format!("{name}: parameters exceed the {MAX_ARGS}-byte argument buffer"));
                };
                params.push((start, size));
                offset = end;
            }
            rest = &rest[close..];
        }
        out.push(FunctionInfo { name, params, attrs });
    }
    Ok(out)
}

/// The architecture of a PTX text's `.target` directive as the driver reports versions (`sm_90a` → 90).
pub fn target_version(ptx: &str) -> Option<i32> {
    let line = ptx.lines().map(str::trim).find(|l| l.starts_with(".target"))?;
    let arch = line[".target".len()..]
        .split([',', ' ', '\t'])
        .find(|t| t.starts_with("sm_"))?;
    let digits: String = arch[3..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
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
    // A hostile image may declare an array whose byte size passes u32: refused, never wrapped to a small size.
    let size = elem
        .checked_mul(count)
        .ok_or(format!("parameter too large in '{decl}'"))?;
    Ok((size, align))
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
pub fn emulated_attrs() -> [i32; FUNC_ATTR_COUNT] {
    // MAX_THREADS_PER_BLOCK, SHARED_SIZE, CONST_SIZE, LOCAL_SIZE, NUM_REGS, PTX_VERSION, BINARY_VERSION,
    // CACHE_MODE_CA, MAX_DYNAMIC_SHARED_SIZE, PREFERRED_SHARED_CARVEOUT, CLUSTER_SIZE_MUST_BE_SET,
    // REQUIRED_CLUSTER_WIDTH/HEIGHT/DEPTH, NON_PORTABLE_CLUSTER_SIZE_ALLOWED, CLUSTER_SCHEDULING_POLICY
    // PTX and binary version 9.0: code for the emulated (Hopper-like, compute capability 9.0) device.
    [1024, 0, 0, 0, 16, 90, 90, 0, 49152, -1, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_versions() {
        assert_eq!(target_version(".version 8.0\n.target sm_80\n"), Some(80));
        assert_eq!(
            target_version(".version 9.0\n.target sm_90a, texmode_independent\n"),
            Some(90)
        );
        assert_eq!(target_version(".version 9.0\n"), None);
    }

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
        // 8-byte elements times 4294967295 passes u32 (found by fuzzing: it overflowed, wrapping in release builds).
        assert!(entries(".entry f( .param .b64 x[4294967295] )").is_err());
    }
}

/// Module-scope `.global` and `.const` variables: (name, size in bytes).
pub fn globals(ptx: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for stmt in top_level_statements(ptx) {
        let tokens: Vec<&str> = stmt.split_whitespace().collect();
        if !tokens.iter().any(|t| *t == ".global" || *t == ".const") || tokens.contains(&".extern") {
            continue;
        }
        let Some(ty) = tokens.iter().position(|t| scalar_size(t).is_some()) else {
            continue;
        };
        let Some(name) = tokens.get(ty + 1) else { continue };
        let elem = scalar_size(tokens[ty]).unwrap_or(1) as u64;
        let base = name.split(['[', '=']).next().unwrap_or("").to_string();
        if base.is_empty() {
            continue;
        }
        // Dimensions come from the text: a product past 2^64 saturates, and the loader refuses it as too large
        // (found by fuzzing).
        let count: u64 = name
            .split('[')
            .skip(1)
            .filter_map(|d| d.split(']').next().and_then(|n| n.trim().parse::<u64>().ok()))
            .try_fold(1u64, |a, n| a.checked_mul(n))
            .unwrap_or(u64::MAX);
        out.push((base, elem.saturating_mul(count.max(1))));
    }
    out
}

/// Statements outside every `{ }` body, split at `;`.
fn top_level_statements(ptx: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for line in ptx.lines() {
        let line = line.split("//").next().unwrap_or("");
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ';' if depth == 0 => out.push(std::mem::take(&mut cur)),
                _ if depth == 0 => cur.push(c),
                _ => {}
            }
        }
        if depth == 0 {
            cur.push(' ');
        }
    }
    out
}

/// A light check that kernel bodies are made of PTX instructions: the emulated backend cannot compile PTX,
/// but must still refuse text the driver's compiler would reject outright (`CUDA_ERROR_INVALID_PTX`).
pub fn looks_compilable(ptx: &str) -> bool {
    let mut depth = 0usize;
    let mut stmt = String::new();
    for line in ptx.lines() {
        let line = line.split("//").next().unwrap_or("");
        for c in line.chars() {
            match c {
                '{' => {
                    depth += 1;
                    stmt.clear();
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    stmt.clear();
                }
                ';' if depth > 0 => {
                    if !statement_ok(&stmt) {
                        return false;
                    }
                    stmt.clear();
                }
                _ if depth > 0 => stmt.push(c),
                _ => {}
            }
        }
        stmt.push(' ');
    }
    true
}

fn statement_ok(stmt: &str) -> bool {
    let mut s = stmt.trim();
    // Labels ("L1:") may precede an instruction.
    while let Some((label, rest)) = s.split_once(':') {
        if label
            .trim()
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
            && !label.trim().is_empty()
        {
            s = rest.trim();
        } else {
            break;
        }
    }
    if s.is_empty() || s.starts_with('.') {
        return true;
    }
    if s.starts_with('@') {
        s = s.split_once(char::is_whitespace).map(|(_, r)| r.trim()).unwrap_or("");
    }
    let opcode = s.split(|c: char| c == '.' || c.is_whitespace()).next().unwrap_or("");
    KNOWN_OPCODES.contains(&opcode)
}

const KNOWN_OPCODES: &[&str] = &[
    "abs",
    "activemask",
    "add",
    "addc",
    "alloca",
    "and",
    "applypriority",
    "atom",
    "bar",
    "barrier",
    "bfe",
    "bfi",
    "bfind",
    "bmsk",
    "bra",
    "brev",
    "brkpt",
    "brx",
    "call",
    "clz",
    "cnot",
    "copysign",
    "cos",
    "cp",
    "createpolicy",
    "cvt",
    "cvta",
    "discard",
    "div",
    "dp2a",
    "dp4a",
    "elect",
    "ex2",
    "exit",
    "fence",
    "fma",
    "fns",
    "getctarank",
    "griddepcontrol",
    "isspacep",
    "istypep",
    "ld",
    "ldmatrix",
    "ldu",
    "lg2",
    "lop3",
    "mad",
    "mad24",
    "madc",
    "mapa",
    "match",
    "max",
    "mbarrier",
    "membar",
    "min",
    "mma",
    "mov",
    "movmatrix",
    "mul",
    "mul24",
    "multimem",
    "nanosleep",
    "neg",
    "not",
    "or",
    "pmevent",
    "popc",
    "prefetch",
    "prefetchu",
    "prmt",
    "rcp",
    "red",
    "redux",
    "rem",
    "ret",
    "rsqrt",
    "sad",
    "selp",
    "set",
    "setmaxnreg",
    "setp",
    "shf",
    "shfl",
    "shl",
    "shr",
    "sin",
    "slct",
    "sqrt",
    "st",
    "stackrestore",
    "stacksave",
    "stmatrix",
    "sub",
    "subc",
    "suld",
    "suq",
    "sured",
    "sust",
    "szext",
    "tanh",
    "tcgen05",
    "tensormap",
    "testp",
    "tex",
    "tld4",
    "trap",
    "txq",
    "vabsdiff",
    "vadd",
    "vmad",
    "vmax",
    "vmin",
    "vote",
    "vset",
    "vshl",
    "vshr",
    "vsub",
    "wgmma",
    "wmma",
    "xor",
    "clusterlaunchcontrol",
    "st.async",
    "red.async",
];

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn finds_globals_and_rejects_non_ptx_bodies() {
        let ptx = ".version 8.0\n.global .align 4 .b8 g_table[1024];\n.visible .global .align 4 .u32 g_counter;\n\
                   .const .align 4 .f32 c_scale = 0f3F800000;\n.extern .global .u32 ext;\n\
                   .visible .entry k(.param .u64 p)\n{\n  .reg .b32 %r<2>;\nL1:\n  mov.u32 %r1, 1;\n  @%p bra L1;\n  ret;\n}\n";
        assert_eq!(
            globals(ptx),
            vec![("g_table".into(), 1024), ("g_counter".into(), 4), ("c_scale".into(), 4)]
        );
        assert!(looks_compilable(ptx));
        assert!(!looks_compilable(
            ".entry b(\n.param .u64 p\n)\n{\n  this is not ptx;\n}\n"
        ));
    }

    #[test]
    fn parameters_past_the_argument_buffer_are_refused() {
        // Found by the `ptx` fuzz target: a byte array larger than the argument buffer.
        let ptx = ".visible .entry big(.param .align 8 .b8 p[40000])\n{ ret; }";
        assert!(entries(ptx).is_err());
        let ok = ".visible .entry fits(.param .align 8 .b8 p[4096])\n{ ret; }";
        assert_eq!(entries(ok).map(|e| e[0].params.clone()), Ok(vec![(0, 4096)]));
    }
}
