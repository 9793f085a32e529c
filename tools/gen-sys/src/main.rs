//! Generates vGPU's CUDA declarations from NVIDIA's headers, so that no C type or signature is typed by hand:
//! the `vgpu-cuda-sys` crate (cuda.h and nvml.h) and the shim's `cuGetProcAddress` table (cudaTypedefs.h).
//!
//! Usage: `cargo run --manifest-path tools/gen-sys/Cargo.toml -- [--check] [INCLUDE_DIR]` (default
//! `.cuda/include`, which scripts/setup-cuda.sh fills from NVIDIA's PyPI wheels). `--check` writes nothing and
//! exits 1 when a committed file differs from what the headers give. Needs libclang (scripts/setup-build-deps.sh).
//!
//! Outputs:
//! - `cuda-sys/src/generated/driver.rs`: every type, enum (as a newtype with named constants), handle and
//!   constant of cuda.h, plus `CUresult::name`.
//! - `cuda-sys/src/generated/driver_functions.rs`: `driver_functions!` hands every declared function (each ABI
//!   variant: legacy, `_v2`, `_ptds`/`_ptsz`) to a callback macro; `driver_signature!` hands one by name;
//!   `UNDECLARED_EXPORTS` lists the symbols NVIDIA's driver exports that no parsed header declares.
//! - `cuda-sys/src/generated/nvml.rs` and `nvml_functions.rs`: the same for nvml.h (`nvml_functions!`,
//!   `nvml_signature!`), legacy unversioned variants included.
//! - `client-shim/src/generated/proc_table.rs`: per base name, the CUDA version that introduced each ABI variant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::visit_mut::VisitMut;

/// Headers whose `CUresult CUDAAPI cu*` declarations the driver exports but bindgen cannot parse here (they need
/// OpenGL/EGL/VDPAU headers): their names are exported as stubs without a signature.
const NAME_ONLY_HEADERS: &[&str] = &["cudaGL.h", "cudaEGL.h", "cudaVDPAU.h"];
const TYPEDEF_HEADERS: &[&str] = &[
    "cudaTypedefs.h",
    "cudaGLTypedefs.h",
    "cudaEGLTypedefs.h",
    "cudaVDPAUTypedefs.h",
    "cudaProfilerTypedefs.h",
];
/// Placeholder for `$crate` while types are printed through syn (which has no `$crate` token).
const CRATE_MARK: &str = "__VGPU_CRATE__";

type Failure = Box<dyn std::error::Error>;

fn main() {
    if let Err(e) = run() {
        eprintln!("gen-sys: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let root = repo_root()?;
    let include = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cuda/include"));
    for header in ["cuda.h", "nvml.h", "cudaTypedefs.h"] {
        if !include.join(header).exists() {
            return Err(format!("{} not found: run scripts/setup-cuda.sh first", include.join(header).display()).into());
        }
    }

    let driver = parse_header(&include, "cuda.h", &["-D__CUDA_API_VERSION_INTERNAL"], "cu", &["CU", "cuuint", "CUDA"])?;
    let nvml = parse_header(&include, "nvml.h", &["-DNVML_NO_UNVERSIONED_FUNC_DEFS"], "nvml", &["nvml", "NVML"])?;

    let declared: BTreeSet<String> = driver.functions.iter().map(|f| f.name.clone()).collect();
    let exported = exported_names(&include, &root, &declared)?;
    let undeclared: Vec<String> = exported.iter().filter(|n| !declared.contains(*n)).cloned().collect();

    let mut outputs: Vec<(PathBuf, String)> = vec![
        (
            root.join("cuda-sys/src/generated/driver.rs"),
            render_types(&driver, "cuda.h", Some((result_names(&include)?, error_strings(&root)?)))?,
        ),
        (
            root.join("cuda-sys/src/generated/driver_functions.rs"),
            render_functions(&driver, "driver", "cuda.h", Some(&undeclared)),
        ),
        (root.join("cuda-sys/src/generated/result_codes.rs"), render_result_codes(&result_names(&include)?)),
        (root.join("cuda-sys/src/generated/nvml.rs"), render_types(&nvml, "nvml.h", None)?),
        (root.join("cuda-sys/src/generated/nvml_functions.rs"), render_functions(&nvml, "nvml", "nvml.h", None)),
    ];
    outputs.push((
        root.join("client-shim/src/generated/proc_table.rs"),
        render_proc_table(&proc_table(&include, &exported)?),
    ));

    let mut stale = Vec::new();
    for (path, text) in &outputs {
        let old = std::fs::read_to_string(path).ok();
        if old.as_deref() != Some(text.as_str()) {
            stale.push(path.strip_prefix(&root).unwrap_or(path).display().to_string());
            if !check {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(path, text)?;
            }
        }
    }
    if check && !stale.is_empty() {
        return Err(format!("generated files are stale (rerun tools/gen-sys): {}", stale.join(", ")).into());
    }
    if stale.is_empty() {
        println!("generated files up to date");
    } else {
        println!("wrote {}", stale.join(", "));
    }
    Ok(())
}

fn repo_root() -> Result<PathBuf, Failure> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| "tools/gen-sys is not inside the repository".into())
}

/// One parsed header: its type items and its functions.
struct Parsed {
    types: Vec<syn::Item>,
    functions: Vec<Function>,
    /// Every type name the header defines (structs, unions, aliases, enums).
    type_names: BTreeSet<String>,
}

struct Function {
    name: String,
    params: Vec<(String, syn::Type)>,
    ret: syn::Type,
}

fn parse_header(
    include: &Path,
    header: &str,
    defines: &[&str],
    fn_prefix: &str,
    type_prefixes: &[&str],
) -> Result<Parsed, Failure> {
    let mut builder = bindgen::Builder::default()
        .header(include.join(header).display().to_string())
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function(format!("^{fn_prefix}.*"))
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .use_core();
    for p in type_prefixes {
        builder = builder.allowlist_type(format!("^{p}.*")).allowlist_var(format!("^{p}.*"));
    }
    for d in defines {
        builder = builder.clang_arg(*d);
    }
    let text = builder.generate().map_err(|e| format!("bindgen on {header}: {e}"))?.to_string();
    let file: syn::File = syn::parse_str(&text)?;
    let mut types = Vec::new();
    let mut functions = Vec::new();
    let mut type_names = BTreeSet::new();
    for item in file.items {
        match item {
            syn::Item::ForeignMod(block) => {
                for fi in block.items {
                    if let syn::ForeignItem::Fn(f) = fi {
                        functions.push(function(&f)?);
                    }
                }
            }
            other => {
                if let Some(name) = defined_type(&other) {
                    type_names.insert(name);
                }
                types.push(other);
            }
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    functions.dedup_by(|a, b| a.name == b.name);
    Ok(Parsed {
        types,
        functions,
        type_names,
    })
}

fn defined_type(item: &syn::Item) -> Option<String> {
    match item {
        syn::Item::Struct(s) => Some(s.ident.to_string()),
        syn::Item::Union(u) => Some(u.ident.to_string()),
        syn::Item::Type(t) => Some(t.ident.to_string()),
        syn::Item::Enum(e) => Some(e.ident.to_string()),
        syn::Item::Use(u) => match &u.tree {
            syn::UseTree::Path(p) => match &*p.tree {
                syn::UseTree::Rename(r) => Some(r.rename.to_string()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn function(f: &syn::ForeignItemFn) -> Result<Function, Failure> {
    let name = f.sig.ident.to_string();
    let mut params = Vec::new();
    for (i, input) in f.sig.inputs.iter().enumerate() {
        let syn::FnArg::Typed(pt) = input else {
            return Err(format!("{name}: receiver in a C declaration").into());
        };
        let pname = match &*pt.pat {
            syn::Pat::Ident(id) => id.ident.to_string(),
            _ => format!("arg{i}"),
        };
        params.push((pname, (*pt.ty).clone()));
    }
    if f.sig.variadic.is_some() {
        return Err(format!("{name}: variadic declarations are not supported").into());
    }
    let ret = match &f.sig.output {
        syn::ReturnType::Type(_, t) => (**t).clone(),
        syn::ReturnType::Default => syn::parse_quote!(()),
    };
    Ok(Function { name, params, ret })
}

/// The strings driver 580's `cuGetErrorString` gives, by code (tools/probes/driver580-error-table.tsv, read on
/// the GPU machine by tools/probes/error_table.c).
fn error_strings(root: &Path) -> Result<BTreeMap<u32, String>, Failure> {
    let path = root.join("tools/probes/driver580-error-table.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut cells = line.splitn(3, '\t');
        let (Some(code), Some(_name), Some(desc)) = (cells.next(), cells.next(), cells.next()) else {
            return Err(format!("{}: malformed line {line:?}", path.display()).into());
        };
        out.insert(code.parse()?, desc.to_string());
    }
    Ok(out)
}

type ResultTables = (Vec<(u32, String)>, BTreeMap<u32, String>);

fn render_types(parsed: &Parsed, header: &str, results: Option<ResultTables>) -> Result<String, Failure> {
    let file = syn::File {
        shebang: None,
        attrs: vec![],
        items: parsed.types.clone(),
    };
    let mut out = format!(
        "// @generated by tools/gen-sys from CUDA 13.0's {header} (bindgen). Do not edit.\n\
         // Every type, enum (a newtype with named constants), handle and constant the header declares.\n\n"
    );
    out.push_str(&prettyplease::unparse(&file));
    if let Some((results, strings)) = results {
        out.push_str("\nimpl CUresult {\n");
        out.push_str("    /// The enumerator name cuda.h gives this code (`CUDA_ERROR_INVALID_VALUE`), if it defines it.\n");
        out.push_str("    pub const fn name(self) -> Option<&'static str> {\n        match self.0 {\n");
        let mut seen = BTreeSet::new();
        for (code, name) in results {
            if seen.insert(code) {
                writeln!(out, "            {code} => Some(\"{name}\"),")?;
            }
        }
        out.push_str("            _ => None,\n        }\n    }\n\n");
        out.push_str("    /// What `cuGetErrorString` says for this code (driver 580's own strings), if cuda.h defines it.\n");
        out.push_str("    pub const fn description(self) -> Option<&'static str> {\n        match self.0 {\n");
        for code in &seen {
            let desc = strings
                .get(code)
                .ok_or_else(|| format!("no driver string for CUresult {code} in driver580-error-table.tsv"))?;
            writeln!(out, "            {code} => Some({desc:?}),")?;
        }
        out.push_str("            _ => None,\n        }\n    }\n}\n");
    }
    Ok(out)
}

/// Rewrites the header's own type names in a signature to `$crate::<module>::Name`, so the macros expand
/// anywhere.
struct Qualify<'a> {
    names: &'a BTreeSet<String>,
    module: &'a str,
}

impl VisitMut for Qualify<'_> {
    fn visit_type_path_mut(&mut self, tp: &mut syn::TypePath) {
        if tp.qself.is_none() && tp.path.leading_colon.is_none() && tp.path.segments.len() == 1 {
            let ident = tp.path.segments[0].ident.to_string();
            if self.names.contains(&ident) {
                let module = syn::Ident::new(self.module, proc_macro2::Span::call_site());
                let mark = syn::Ident::new(CRATE_MARK, proc_macro2::Span::call_site());
                let seg = &tp.path.segments[0].ident;
                *tp = syn::parse_quote!(#mark::#module::#seg);
                return;
            }
        }
        syn::visit_mut::visit_type_path_mut(self, tp);
    }
}

fn type_text(ty: &syn::Type, q: &mut Qualify<'_>) -> String {
    let mut ty = ty.clone();
    q.visit_type_mut(&mut ty);
    let raw = ty.to_token_stream().to_string();
    tidy(&raw).replace(CRATE_MARK, "$crate")
}

/// Token-stream spacing (`* mut :: core :: ffi :: c_uint`) back to the way Rust is written.
fn tidy(s: &str) -> String {
    s.replace("* mut ", "*mut ")
        .replace("* const ", "*const ")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace("*mut::", "*mut ::")
        .replace("*const::", "*const ::")
        .replace(" ,", ",")
        .replace("[ ", "[")
        .replace(" ]", "]")
        .replace(" ;", ";")
        .replace("( ", "(")
        .replace(" )", ")")
}

fn signature_line(f: &Function, q: &mut Qualify<'_>) -> String {
    let params: Vec<String> = f
        .params
        .iter()
        .map(|(n, t)| format!("{n}: {}", type_text(t, q)))
        .collect();
    format!("{}({}) -> {}", f.name, params.join(", "), type_text(&f.ret, q))
}

fn render_functions(parsed: &Parsed, module: &str, header: &str, undeclared: Option<&[String]>) -> String {
    let mut q = Qualify {
        names: &parsed.type_names,
        module,
    };
    let lines: Vec<String> = parsed.functions.iter().map(|f| signature_line(f, &mut q)).collect();
    let mut out = format!(
        "// @generated by tools/gen-sys from CUDA 13.0's {header} (bindgen). Do not edit.\n\
         // Every function the header declares, as `name(param: Type, ...) -> Ret;` items handed to a macro.\n\n"
    );
    let _ = writeln!(
        out,
        "/// Hands every function {header} declares ({} of them, each ABI variant under its own name) to\n\
         /// `$callback!` as `name(param: Type, ...) -> Ret;` items. Tokens after the callback are passed first, in brackets.\n\
         #[macro_export]\nmacro_rules! {module}_functions {{\n    ($callback:ident $(, $($extra:tt)*)?) => {{\n        $callback! {{\n            [$($($extra)*)?]",
        lines.len()
    );
    for l in &lines {
        let _ = writeln!(out, "            {l};");
    }
    out.push_str("        }\n    };\n}\n\n");
    let _ = writeln!(
        out,
        "/// Hands the declaration of one function, named first, to `$callback!` as `[extra tokens] name(...) -> Ret;`.\n\
         /// A name the header does not declare is a compile error.\n#[macro_export]\nmacro_rules! {module}_signature {{"
    );
    for (f, l) in parsed.functions.iter().zip(&lines) {
        let _ = writeln!(
            out,
            "    ({}, $callback:ident $(, $($extra:tt)*)?) => {{ $callback! {{ [$($($extra)*)?] {l}; }} }};",
            f.name
        );
    }
    out.push_str("}\n");
    let _ = writeln!(
        out,
        "\n/// Names of every function {header} declares, sorted.\npub const {}_FUNCTION_NAMES: &[&str] = &[",
        module.to_uppercase()
    );
    for f in &parsed.functions {
        let _ = writeln!(out, "    \"{}\",", f.name);
    }
    out.push_str("];\n");
    if let Some(undeclared) = undeclared {
        out.push_str(
            "\n/// Symbols NVIDIA's driver exports that no header parsed here declares (OpenGL, EGL and VDPAU interop, the\n\
             /// profiler, and what `nm -D` of driver 580 lists beyond the headers): exported as stubs, with no signature.\n\
             pub const UNDECLARED_EXPORTS: &[&str] = &[\n",
        );
        for n in undeclared {
            let _ = writeln!(out, "    \"{n}\",");
        }
        out.push_str("];\n");
        out.push_str(
            "\n/// Hands every name of `UNDECLARED_EXPORTS` to `$callback!` as `[extra tokens] name, name, ...`.\n\
             #[macro_export]\nmacro_rules! undeclared_exports {\n    ($callback:ident $(, $($extra:tt)*)?) => {\n        $callback! {\n            [$($($extra)*)?]\n",
        );
        for n in undeclared {
            let _ = writeln!(out, "            {n},");
        }
        out.push_str("        }\n    };\n}\n");
    }
    out
}

/// Every CUresult enumerator as a module-level constant, so code can name codes without the type prefix.
fn render_result_codes(codes: &[(u32, String)]) -> String {
    let mut out = String::from(
        "// @generated by tools/gen-sys from CUDA 13.0's cuda.h. Do not edit.\n\
         // Every CUresult enumerator as a constant of type CUresult (`use vgpu_cuda_sys::codes::*`).\n\n\
         use crate::driver::CUresult;\n\n",
    );
    let mut seen = BTreeSet::new();
    for (_, name) in codes {
        if seen.insert(name.clone()) {
            let _ = writeln!(out, "pub const {name}: CUresult = CUresult::{name};");
        }
    }
    out
}

fn result_names(include: &Path) -> Result<Vec<(u32, String)>, Failure> {
    let text = std::fs::read_to_string(include.join("cuda.h"))?;
    let body = regex::Regex::new(r"(?s)typedef enum cudaError_enum \{(.*?)\} CUresult;")?
        .captures(&text)
        .and_then(|c| c.get(1))
        .ok_or("cuda.h: CUresult enum not found")?
        .as_str()
        .to_string();
    let enumerator = regex::Regex::new(r"(CUDA_\w+)\s*=\s*(\d+)\s*,?")?;
    let mut codes = Vec::new();
    for line in body.lines() {
        if let Some(c) = enumerator.captures(line) {
            codes.push((c[2].parse()?, c[1].to_string()));
        }
    }
    Ok(codes)
}

/// Every symbol the driver exports: the declarations of cuda.h, the interop headers' names, and the probe of
/// driver 580's export table (tools/probes/driver580-exports.txt).
fn exported_names(include: &Path, root: &Path, declared: &BTreeSet<String>) -> Result<Vec<String>, Failure> {
    let decl = regex::Regex::new(r"CUresult\s+CUDAAPI\s+(cu\w+)\s*\(")?;
    let alias = regex::Regex::new(
        r"(?m)^\s*#define\s+(cu\w+)\s+(__CUDA_API_PTDS|__CUDA_API_PTSZ)?\s*\(?\s*(cu\w+)\s*\)?\s*$",
    )?;
    let mut names: BTreeSet<String> = declared.clone();
    for header in NAME_ONLY_HEADERS {
        let path = include.join(header);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Err(format!("{} not found", path.display()).into());
        };
        for c in decl.captures_iter(&text) {
            names.insert(c[1].to_string());
        }
        for c in alias.captures_iter(&text) {
            let target = c[3].to_string();
            match c.get(2).map(|m| m.as_str()) {
                Some("__CUDA_API_PTDS") => {
                    names.insert(format!("{target}_ptds"));
                }
                Some("__CUDA_API_PTSZ") => {
                    names.insert(format!("{target}_ptsz"));
                }
                _ => {}
            }
            names.insert(target);
        }
    }
    let probe = root.join("tools/probes/driver580-exports.txt");
    let text = std::fs::read_to_string(&probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("cu") && !line.starts_with("cudbg") {
            names.insert(line.to_string());
        }
    }
    // cuda.h also declares these runtime-internal helpers; they are not driver exports.
    Ok(names.into_iter().filter(|n| !n.starts_with("cudaGet")).collect())
}

type Rows = Vec<(u32, String)>;

/// Per base name: the (introduced, symbol) rows of the default and per-thread variants, ascending.
///
/// cudaTypedefs.h names one typedef per ABI variant, `PFN_<base>_v<CUDA version that introduced it>`, with
/// `_ptsz`/`_ptds` for the per-thread-default-stream variants. The driver exports the variants as `<base>`,
/// `<base>_v2`, `<base>_v3`... in the same order (oldest unsuffixed), so the n-th oldest typedef is the n-th
/// symbol. Where the counts differ the pairing would be a guess, so generation stops.
fn proc_table(include: &Path, exports: &[String]) -> Result<BTreeMap<String, (Rows, Rows)>, Failure> {
    let pfn = regex::Regex::new(r"\bPFN_(cu\w+?)_v(\d+)(_ptsz|_ptds)?\b")?;
    let mut versions: BTreeMap<(String, bool), BTreeSet<u32>> = BTreeMap::new();
    for header in TYPEDEF_HEADERS {
        let Ok(text) = std::fs::read_to_string(include.join(header)) else {
            continue;
        };
        for c in pfn.captures_iter(&text) {
            versions
                .entry((c[1].to_string(), c.get(3).is_some()))
                .or_default()
                .insert(c[2].parse()?);
        }
    }
    let mut table: BTreeMap<String, (Rows, Rows)> = BTreeMap::new();
    for ((base, per_thread), vers) in versions {
        let variant = regex::Regex::new(&format!(r"^{}(?:_v(\d+))?(_ptsz|_ptds)?$", regex::escape(&base)))?;
        let mut symbols: Vec<(u32, String)> = Vec::new();
        for name in exports {
            if let Some(m) = variant.captures(name) {
                if m.get(2).is_some() == per_thread {
                    let n = m.get(1).map(|v| v.as_str().parse()).transpose()?.unwrap_or(1);
                    symbols.push((n, name.clone()));
                }
            }
        }
        symbols.sort();
        if symbols.len() != vers.len() {
            return Err(format!(
                "{base}{}: typedef versions {vers:?} do not pair with exported variants {:?}",
                if per_thread { " (per-thread)" } else { "" },
                symbols.iter().map(|s| &s.1).collect::<Vec<_>>()
            )
            .into());
        }
        let rows: Rows = vers.into_iter().zip(symbols.into_iter().map(|s| s.1)).collect();
        let entry = table.entry(base).or_default();
        if per_thread {
            entry.1.extend(rows);
        } else {
            entry.0.extend(rows);
        }
    }
    Ok(table)
}

fn render_proc_table(table: &BTreeMap<String, (Rows, Rows)>) -> String {
    fn rows(rs: &Rows) -> String {
        let cells: Vec<String> = rs.iter().map(|(v, s)| format!("({v}, \"{s}\")")).collect();
        format!("&[{}]", cells.join(", "))
    }
    let mut out = String::from(
        "// @generated by tools/gen-sys from CUDA 13.0's cudaTypedefs.h (and the GL/EGL/VDPAU/profiler\n\
         // typedef headers). Do not edit. Per base name, sorted: the CUDA version that introduced each ABI variant\n\
         // and its exported symbol, ascending; then the same for the per-thread-default-stream variants.\n\n\
         pub const PROC_TABLE: &[(&str, Variants, Variants)] = &[\n",
    );
    for (base, (default, per_thread)) in table {
        let _ = writeln!(out, "    (\"{base}\", {}, {}),", rows(default), rows(per_thread));
    }
    out.push_str("];\n");
    out
}
