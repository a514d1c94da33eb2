//! The `.npy` array header: parsing (versions 1, 2, 3) and writing.
//!
//! Spec: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.
//! A file is the magic `\x93NUMPY`, a major and minor version byte, a little-endian
//! header length (u16 in version 1, u32 in versions 2 and 3), then a Python dict
//! literal `{'descr': ..., 'fortran_order': ..., 'shape': (...), }` padded with
//! spaces and a newline, then the raw data.

use std::io::Read;
use std::path::Path;

use crate::source::{fortran_strides, Layout};
use crate::{DType, Error, Result};

/// The six magic bytes every `.npy` starts with.
pub(crate) const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header accepted. numpy itself refuses headers over 10 000 bytes by default
/// (`max_header_size`); a little more room costs nothing and nothing legitimate is larger.
pub(crate) const MAX_HEADER_LEN: usize = 65_536;

/// Deepest nesting of the header's Python literal (a dict holding a tuple is depth 2).
const MAX_LITERAL_DEPTH: usize = 8;

/// What the header of one array says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyHeader {
    pub dtype: DType,
    /// The descr as written when it differs from `dtype`'s plain name (numpy's `<V2` for bfloat16).
    pub stored_as: Option<String>,
    pub byteswap: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data: magic, version, length field, and the header text.
    pub data_offset: u64,
}

impl NpyHeader {
    /// How the data is laid out relative to C order.
    pub(crate) fn layout(&self) -> Option<Layout> {
        if self.fortran_order && self.shape.len() > 1 {
            Some(Layout::Strided(fortran_strides(&self.shape)?))
        } else {
            Some(Layout::C)
        }
    }
}

/// Maps an I/O error while reading a header to the crate's error.
fn header_io(path: &Path, tensor: &str, what: &str, need: u64, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::truncated(path, tensor, 0, need, 0)
    } else {
        Error::NpyHeader {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            detail: format!("reading the {what}: {err}"),
        }
    }
}

/// Reads and parses a header from the start of an array's bytes; reads nothing past it.
pub(crate) fn read_header(r: &mut impl Read, path: &Path, tensor: &str) -> Result<NpyHeader> {
    let bad = |detail: String| Error::NpyHeader {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        detail,
    };
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix)
        .map_err(|e| header_io(path, tensor, "magic", 8, e))?;
    let (magic, version) = prefix.split_at(6);
    if magic != MAGIC {
        return Err(bad(format!(
            "missing the \\x93NUMPY magic (found {:?})",
            magic
        )));
    }
    let major = version.first().copied().unwrap_or(0);
    let (len, prefix_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| header_io(path, tensor, "header length", 10, e))?;
            (usize::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| header_io(path, tensor, "header length", 12, e))?;
            let len = usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
            (len, 12u64)
        }
        other => {
            return Err(bad(format!(
                "unsupported format version {other} (1, 2 and 3 are known)"
            )))
        }
    };
    if len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header of {len} bytes exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    // At most 12 + `MAX_HEADER_LEN` bytes: the saturating form never saturates.
    let data_offset = prefix_len.saturating_add(len as u64);
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| header_io(path, tensor, "header", data_offset, e))?;
    // Versions 1 and 2 are latin-1; every byte of a valid header is ASCII, so reject the rest.
    let text = std::str::from_utf8(&text).map_err(|_| bad("header is not text".into()))?;
    let mut header = parse_dict(text, path, tensor)?;
    header.data_offset = data_offset;
    Ok(header)
}

/// A value of the small Python literal language numpy headers use.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(u64),
    Bool(bool),
    Seq(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

/// A recursive-descent parser over the header text.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// Moves past `n` bytes the caller has just looked at, so `pos` stays within the text.
    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n);
    }

    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.advance(1);
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.advance(1);
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > MAX_LITERAL_DEPTH {
            return Err("header nests too deeply".into());
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.advance(1);
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(|&b| b != q) {
                    self.advance(1);
                }
                let body = self.s.get(start..self.pos).ok_or("unterminated string")?;
                self.expect(q)?;
                Ok(Lit::Str(String::from_utf8_lossy(body).into_owned()))
            }
            Some(b'0'..=b'9') => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.advance(1);
                }
                // Python 2 era files may write `3L`.
                if self.s.get(self.pos) == Some(&b'L') {
                    self.advance(1);
                }
                let digits = self.s.get(start..self.pos).unwrap_or_default();
                let digits = std::str::from_utf8(digits)
                    .unwrap_or_default()
                    .trim_end_matches('L');
                digits
                    .parse::<u64>()
                    .map(Lit::Int)
                    .map_err(|_| format!("dimension {digits} does not fit in 64 bits"))
            }
            Some(open @ (b'(' | b'[')) => {
                self.advance(1);
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.advance(1);
                        break;
                    }
                    items.push(self.value(depth.saturating_add(1))?);
                    match self.peek() {
                        Some(b',') => self.advance(1),
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or {:?} at byte {}",
                                close as char, self.pos
                            ))
                        }
                    }
                }
                Ok(Lit::Seq(items))
            }
            Some(b'{') => {
                self.advance(1);
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.advance(1);
                        break;
                    }
                    let Lit::Str(key) = self.value(depth.saturating_add(1))? else {
                        return Err("dict key is not a string".into());
                    };
                    self.expect(b':')?;
                    let v = self.value(depth.saturating_add(1))?;
                    items.push((key, v));
                    match self.peek() {
                        Some(b',') => self.advance(1),
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
                    }
                }
                Ok(Lit::Dict(items))
            }
            _ => {
                let rest = self.s.get(self.pos..).unwrap_or_default();
                if rest.starts_with(b"True") {
                    self.advance(4);
                    Ok(Lit::Bool(true))
                } else if rest.starts_with(b"False") {
                    self.advance(5);
                    Ok(Lit::Bool(false))
                } else {
                    Err(format!("unexpected text at byte {}", self.pos))
                }
            }
        }
    }
}

/// Parses the header dict and validates its three keys.
fn parse_dict(text: &str, path: &Path, tensor: &str) -> Result<NpyHeader> {
    let bad = |detail: String| Error::NpyHeader {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        detail,
    };
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let lit = p.value(0).map_err(bad)?;
    // Only the padding numpy writes (spaces, then a newline) may follow the dict.
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(Error::NpyTrailingText {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            offset: p.pos as u64,
        });
    }
    let Lit::Dict(items) = lit else {
        return Err(bad("header is not a dict".into()));
    };
    // Python would keep the last of a repeated key; a header that says two things is refused.
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (key, _) in &items {
        if !seen.insert(key.as_str()) {
            return Err(Error::DuplicateKey {
                path: path.to_path_buf(),
                tensor: tensor.to_string(),
                format: ".npy",
                key: key.clone(),
            });
        }
    }
    let get = |k: &str| items.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Lit::Str(s)) => s.clone(),
        // A list descr is a structured dtype: no tensor has one.
        Some(other) => {
            return Err(Error::UnknownDType {
                path: path.to_path_buf(),
                tensor: tensor.to_string(),
                descr: format!("{other:?}"),
            })
        }
        None => return Err(bad("no 'descr' key".into())),
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        _ => return Err(bad("no boolean 'fortran_order' key".into())),
    };
    let shape = match get("shape") {
        Some(Lit::Seq(dims)) => {
            let mut shape = Vec::with_capacity(dims.len());
            for d in dims {
                let Lit::Int(n) = d else {
                    return Err(bad("shape holds a non-integer".into()));
                };
                let n = usize::try_from(*n).map_err(|_| Error::ShapeOverflow {
                    path: path.to_path_buf(),
                    tensor: tensor.to_string(),
                    shape: dims
                        .iter()
                        .map(|d| if let Lit::Int(n) = d { *n } else { 0 })
                        .collect(),
                })?;
                shape.push(n);
            }
            shape
        }
        _ => return Err(bad("no tuple 'shape' key".into())),
    };
    let (dtype, byteswap, stored_as) = parse_descr(&descr).ok_or_else(|| Error::UnknownDType {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        descr: descr.clone(),
    })?;
    Ok(NpyHeader {
        dtype,
        stored_as,
        byteswap,
        fortran_order,
        shape,
        data_offset: 0,
    })
}

/// Maps a numpy type string (`<f4`, `|u1`, `<V2`, ...) to a dtype, whether to swap bytes, and a stored-as note.
pub(crate) fn parse_descr(descr: &str) -> Option<(DType, bool, Option<String>)> {
    let mut chars = descr.chars();
    let order = chars.next()?;
    let code = chars.as_str();
    let dtype = match code {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        // JAX's bfloat16 has no numpy dtype; np.save writes it as a 2-byte void.
        "V2" => DType::BF16,
        _ => return None,
    };
    let big = match order {
        '<' | '|' => false,
        '=' => cfg!(target_endian = "big"),
        '>' => true,
        _ => return None,
    };
    let stored_as =
        (dtype == DType::BF16).then(|| format!("{descr} (numpy void, read as bfloat16)"));
    Some((dtype, big && dtype.size() > 1, stored_as))
}

/// The descr numpy writes for a dtype (bfloat16 as the void type JAX files use).
pub(crate) fn descr_of(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "<f8",
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 => "<V2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

/// Alignment numpy pads headers to, so data starts aligned.
const HEADER_ALIGN: usize = 64;

/// Writes a complete header (magic through the newline) for a C-order array.
pub(crate) fn write_header(dtype: DType, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        descr_of(dtype)
    );
    // Version 1 has a u16 length; a header that would not fit takes version 2.
    // The dict and its newline: a few bytes per dimension, far from overflowing.
    let line = dict.len().saturating_add(1);
    let (version, prefix) = if line.saturating_add(10 + HEADER_ALIGN) <= usize::from(u16::MAX) {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let total = prefix
        .saturating_add(line)
        .div_ceil(HEADER_ALIGN)
        .saturating_mul(HEADER_ALIGN);
    let pad = total.saturating_sub(prefix).saturating_sub(line);
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<NpyHeader> {
        read_header(&mut &bytes[..], Path::new("t.npy"), "x")
    }

    fn header_v1(dict: &str) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v
    }

    #[test]
    fn written_headers_parse_back_in_every_dtype() {
        for dtype in DType::ALL {
            for shape in [vec![], vec![0], vec![7], vec![2, 3, 4]] {
                let h = write_header(dtype, &shape);
                assert_eq!(h.len() % HEADER_ALIGN, 0);
                let parsed = parse(&h).unwrap();
                assert_eq!(parsed.dtype, dtype);
                assert_eq!(parsed.shape, shape);
                assert!(!parsed.fortran_order);
                assert_eq!(parsed.data_offset, h.len() as u64);
            }
        }
    }

    #[test]
    fn versions_two_and_three_and_void_bf16() {
        let dict = "{'descr': '<V2', 'fortran_order': True, 'shape': (3, 2), }\n";
        for major in [2u8, 3] {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&[major, 0]);
            v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            v.extend_from_slice(dict.as_bytes());
            let h = parse(&v).unwrap();
            assert_eq!(h.dtype, DType::BF16);
            assert!(h.stored_as.as_deref().unwrap().starts_with("<V2"));
            assert!(h.fortran_order);
            assert_eq!(h.data_offset, 12 + dict.len() as u64);
        }
    }

    #[test]
    fn not_applicable_byte_order_void_is_bf16_too() {
        // numpy writes a 2-byte void with the `|` (not applicable) order, as Kaggle's PaliGemma `.b16.npz`
        // files have it; it is bfloat16 like `<V2`, and nothing is swapped.
        let (dtype, swap, note) = parse_descr("|V2").unwrap();
        assert_eq!((dtype, swap), (DType::BF16, false));
        assert!(note.unwrap().starts_with("|V2"));
        let (dtype, swap, _) = parse_descr(">V2").unwrap();
        assert_eq!((dtype, swap), (DType::BF16, true));
    }

    #[test]
    fn big_endian_is_swapped() {
        let h = parse(&header_v1(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2,)}\n",
        ))
        .unwrap();
        assert!(h.byteswap);
        let h = parse(&header_v1(
            "{'descr': '>i1', 'fortran_order': False, 'shape': (2,)}\n",
        ))
        .unwrap();
        assert!(!h.byteswap);
    }

    #[test]
    fn unknown_dtype_is_refused() {
        let err = parse(&header_v1(
            "{'descr': '<c8', 'fortran_order': False, 'shape': (2,)}\n",
        ))
        .unwrap_err();
        assert!(
            matches!(err, Error::UnknownDType { ref descr, .. } if descr == "<c8"),
            "{err}"
        );
        let err = parse(&header_v1(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}\n",
        ))
        .unwrap_err();
        assert!(matches!(err, Error::UnknownDType { .. }), "{err}");
    }

    #[test]
    fn overflowing_dimension_is_refused() {
        let err = parse(&header_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}\n",
        ))
        .unwrap_err();
        assert!(matches!(err, Error::NpyHeader { .. }), "{err}");
    }

    #[test]
    fn malformed_headers_are_refused() {
        for dict in [
            "{'descr': '<f4', 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
            "['descr']",
            "{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((2,),),),),),),),),),)}",
            "{'descr': '<f4', 'fortran_order': Nope, 'shape': (2,)}",
        ] {
            assert!(
                matches!(parse(&header_v1(dict)), Err(Error::NpyHeader { .. })),
                "{dict}"
            );
        }
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[9, 0, 0, 0]);
        assert!(matches!(parse(&v), Err(Error::NpyHeader { .. })));
    }

    #[test]
    fn repeated_keys_and_text_after_the_dict_are_refused() {
        let err = parse(&header_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (3,), }",
        ))
        .unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateKey { key, format: ".npy", .. } if key == "shape"),
            "{err}"
        );
        let err = parse(&header_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } {'shape': (3,)}\n",
        ))
        .unwrap_err();
        assert!(
            matches!(err, Error::NpyTrailingText { offset: 58, .. }),
            "{err}"
        );
        // Padding and the newline are not text.
        assert!(parse(&header_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }     \n"
        ))
        .is_ok());
    }

    #[test]
    fn oversized_header_length_is_refused_before_reading() {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[2, 0]);
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = parse(&v).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn short_header_is_truncated() {
        let h = write_header(DType::F32, &[4]);
        let err = parse(&h[..h.len() - 5]).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
    }
}
