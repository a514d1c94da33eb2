//! SentencePiece tokenizer models given with `--tokenizer`: read within a size limit, parsed far enough to
//! count the pieces and find `</s>` and the unknown piece, checked against the text tower's vocabulary, and
//! turned into the files transformers' `SiglipTokenizer` loads (which open_clip's `HFTokenizer` loads too).
//!
//! A `.npz` holds no vocabulary, so the ids a tokenizer gives are only right if its pieces are the model's:
//! the check here catches a tokenizer with more pieces than the embedding has rows, the one mismatch the
//! shapes can see. The model file is copied byte for byte.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::plan::SideFile;

/// The largest tokenizer model read: published SentencePiece models are 0.8 to 4.5 MB (Gemma's 256k
/// pieces); 64 MiB leaves room for any real one and refuses a wrong file before it is read whole.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The SentencePiece model's name inside the output folder (`SiglipTokenizer`'s `vocab_file`).
pub const SPIECE_FILE: &str = "spiece.model";
/// The tokenizer's configuration inside the output folder.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens' names inside the output folder.
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// Every file the tokenizer puts into a folder. A folder written again with `--force` and without
/// `--tokenizer` loses the ones an earlier run wrote, so that new weights never sit beside an old tokenizer.
pub const FOLDER_FILES: [&str; 3] = [SPIECE_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE];

/// The end-of-sequence piece SigLIP pads with and pools after.
const EOS_PIECE: &str = "</s>";

/// SentencePiece's piece type for the unknown piece (`ModelProto.SentencePiece.Type.UNKNOWN`).
const TYPE_UNKNOWN: u64 = 2;

/// A checked SentencePiece model.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's bytes, written unchanged into the output.
    pub bytes: Vec<u8>,
    /// How many pieces it holds: token ids run from 0 to `pieces - 1`.
    pub pieces: usize,
    /// The id of `</s>`.
    pub eos_id: usize,
    /// The unknown piece's text (`<unk>`).
    pub unk: String,
}

/// Reads and checks a SentencePiece model file.
pub fn read(path: &Path) -> Result<SentencePiece> {
    // A regular file only (a FIFO given as the tokenizer blocked the run), of bounded size.
    let bytes = match vitconv_tensors::read_regular_file(path, MAX_TOKENIZER_BYTES) {
        Ok(b) => b,
        Err(vitconv_tensors::Error::FileTooLarge { size, .. }) => {
            return Err(too_large(path, size))
        }
        Err(e) => return Err(e.into()),
    };
    from_bytes(path, bytes)
}

/// Checks a SentencePiece model held in `bytes` (named `path` in errors): the same limit and parse as
/// [`read`], for bytes that did not come from a file (the fuzz target).
///
/// The parse allocates nothing beyond `bytes` itself and the unknown piece's text (a slice of it): every
/// length is checked against the bytes left before anything is taken, and nesting stops at a piece's fields.
pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SentencePiece> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > MAX_TOKENIZER_BYTES {
        return Err(too_large(path, size));
    }
    parse(path, bytes)
}

/// Parses untrusted `bytes` as a SentencePiece model through [`from_bytes`], for the `sentencepiece` fuzz target
/// and the replay of its seeds; returns how many pieces an accepted model holds.
///
/// Checks what every outcome must satisfy, so that a violation is a panic and a finding: an accepted model keeps
/// the input unchanged, has at least one piece and no more than its bytes can encode (each piece takes at least
/// two bytes: its key and its length), an `</s>` id among them, an unknown piece whose text is part of the
/// input, and passes [`SentencePiece::check_vocab`] against exactly its own number of pieces and no fewer; a
/// refusal for its format names an offset inside the input.
pub fn fuzz_model(bytes: &[u8]) -> Result<usize> {
    let path = Path::new("fuzz/spiece.model");
    match from_bytes(path, bytes.to_vec()) {
        Ok(sp) => {
            assert_eq!(sp.bytes, bytes, "the model's bytes are the input's");
            assert!(sp.pieces >= 1, "an accepted model has a piece");
            assert!(
                sp.pieces.saturating_mul(2) <= bytes.len(),
                "{} pieces from {} bytes",
                sp.pieces,
                bytes.len()
            );
            assert!(sp.eos_id < sp.pieces, "</s> is one of the pieces");
            assert!(
                sp.unk.len() <= bytes.len(),
                "the unknown piece is in the input"
            );
            assert!(sp.check_vocab(sp.pieces).is_ok(), "fits its own vocabulary");
            assert!(
                sp.check_vocab(sp.pieces.saturating_sub(1)).is_err(),
                "a smaller vocabulary is refused"
            );
            let (side, (_, copied)) = sp.files(8);
            assert_eq!(copied, bytes, "the model is copied unchanged");
            assert_eq!(side.len(), 2, "two configs");
            Ok(sp.pieces)
        }
        Err(e) => {
            if let Error::TokenizerFormat { offset, .. } = &e {
                assert!(*offset <= bytes.len(), "offset {offset} past the input");
            }
            Err(e)
        }
    }
}

/// The refusal of a model file of `size` bytes, past [`MAX_TOKENIZER_BYTES`].
fn too_large(path: &Path, size: u64) -> Error {
    Error::TokenizerTooLarge {
        path: path.to_path_buf(),
        size,
        max: MAX_TOKENIZER_BYTES,
    }
}

/// A protobuf reader over one message's bytes; every read is bounds-checked and names its offset on failure.
struct Proto<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// Where `bytes` starts in the file, for error offsets inside nested messages.
    base: usize,
}

impl<'a> Proto<'a> {
    fn bad(&self, expected: &'static str) -> Error {
        Error::TokenizerFormat {
            path: self.path.to_path_buf(),
            offset: self.base.saturating_add(self.pos),
            expected,
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.bad("a varint, not the end of the data"))?;
            self.pos = self.pos.saturating_add(1);
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad("a varint of at most 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<(usize, &'a [u8])> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.bad("a field that ends inside the data"))?;
        self.pos = end;
        let slice = self
            .bytes
            .get(start..end)
            .ok_or_else(|| self.bad("a field that ends inside the data"))?;
        Ok((self.base.saturating_add(start), slice))
    }

    /// The next field: its number and, for length-delimited fields, its bytes with their file offset; other
    /// wire types are skipped (varints give their value).
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| self.bad("a length that fits in memory"))?;
                let (offset, data) = self.take(len)?;
                Field::Bytes(offset, data)
            }
            5 => {
                self.take(4)?;
                Field::Other
            }
            _ => {
                // The error names the field's key, where the foreign data starts.
                self.pos = start;
                return Err(self.bad("a protobuf wire type 0, 1, 2 or 5"));
            }
        };
        Ok(Some((number, field)))
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(usize, &'a [u8]),
    Other,
}

/// Parses `ModelProto`: field 1 is each `SentencePiece` (field 1 its text, field 3 its type).
fn parse(path: &Path, bytes: Vec<u8>) -> Result<SentencePiece> {
    let mut pieces = 0usize;
    let mut eos_id = None;
    let mut unk = None;
    {
        let mut top = Proto {
            path,
            bytes: &bytes,
            pos: 0,
            base: 0,
        };
        while let Some((number, field)) = top.field()? {
            let (1, Field::Bytes(offset, data)) = (number, field) else {
                continue;
            };
            let mut piece = Proto {
                path,
                bytes: data,
                pos: 0,
                base: offset,
            };
            let (mut text, mut kind) = (None, 1u64);
            while let Some((n, f)) = piece.field()? {
                match (n, f) {
                    (1, Field::Bytes(_, t)) => text = Some(t),
                    (3, Field::Varint(v)) => kind = v,
                    _ => {}
                }
            }
            let text = std::str::from_utf8(text.unwrap_or_default())
                .map_err(|_| piece.bad("a piece whose text is UTF-8"))?;
            if text == EOS_PIECE && eos_id.is_none() {
                eos_id = Some(pieces);
            }
            if kind == TYPE_UNKNOWN && unk.is_none() {
                unk = Some(text.to_string());
            }
            pieces = pieces.saturating_add(1);
        }
    }
    if pieces == 0 {
        return Err(Error::TokenizerFormat {
            path: path.to_path_buf(),
            offset: 0,
            expected: "a SentencePiece model (ModelProto) with at least one piece",
        });
    }
    let (Some(eos_id), Some(unk)) = (eos_id, unk) else {
        return Err(Error::TokenizerPieces {
            path: path.to_path_buf(),
            pieces,
        });
    };
    Ok(SentencePiece {
        path: path.to_path_buf(),
        bytes,
        pieces,
        eos_id,
        unk,
    })
}

impl SentencePiece {
    /// Checks the model against a text tower with `vocab` embedding rows.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        if self.pieces > vocab {
            return Err(Error::TokenizerVocab {
                path: self.path.clone(),
                pieces: self.pieces,
                vocab,
            });
        }
        Ok(())
    }

    /// `tokenizer_config.json` for transformers' `SiglipTokenizer`: `</s>` pads and ends every sequence,
    /// `context` tokens at most (SigLIP is trained on sequences padded to exactly that length: pass
    /// `padding='max_length'`).
    pub fn tokenizer_config(&self, context: usize) -> Value {
        json!({
            "tokenizer_class": "SiglipTokenizer",
            "processor_class": "SiglipProcessor",
            "model_max_length": context,
            "do_lower_case": true,
            "eos_token": EOS_PIECE,
            "pad_token": EOS_PIECE,
            "unk_token": self.unk,
            "padding_side": "right",
            "additional_special_tokens": [],
            "sp_model_kwargs": {},
        })
    }

    /// `special_tokens_map.json`.
    pub fn special_tokens(&self) -> Value {
        json!({"eos_token": EOS_PIECE, "pad_token": EOS_PIECE, "unk_token": self.unk})
    }

    /// The files a folder output gets: the two JSON configs as side files, and the model copied unchanged.
    pub fn files(&self, context: usize) -> (Vec<SideFile>, (String, Vec<u8>)) {
        let pretty = |v: &Value| {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            s.push('\n');
            s
        };
        (
            vec![
                SideFile {
                    name: TOKENIZER_CONFIG_FILE.to_string(),
                    contents: pretty(&self.tokenizer_config(context)),
                },
                SideFile {
                    name: SPECIAL_TOKENS_FILE.to_string(),
                    contents: pretty(&self.special_tokens()),
                },
            ],
            (SPIECE_FILE.to_string(), self.bytes.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf varint.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field.
    fn bytes_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// A `ModelProto` with these pieces (text, type) and a trainer spec field to skip.
    fn model(pieces: &[(&str, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (text, kind) in pieces {
            let mut p = Vec::new();
            bytes_field(1, text.as_bytes(), &mut p);
            p.push(2 << 3 | 5);
            p.extend_from_slice(&(-1.5f32).to_le_bytes());
            varint(3 << 3, &mut p);
            varint(*kind, &mut p);
            bytes_field(1, &p, &mut out);
        }
        bytes_field(2, b"\x08\x01", &mut out);
        out
    }

    #[test]
    fn counts_pieces_and_finds_eos_and_unk() {
        let sp = parse(
            Path::new("t.model"),
            model(&[("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("\u{2581}a", 1)]),
        )
        .expect("parses");
        assert_eq!((sp.pieces, sp.eos_id, sp.unk.as_str()), (4, 1, "<unk>"));
        assert!(sp.check_vocab(4).is_ok());
        assert!(matches!(
            sp.check_vocab(3),
            Err(Error::TokenizerVocab {
                pieces: 4,
                vocab: 3,
                ..
            })
        ));
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let mut m = model(&[("</s>", 3), ("<unk>", 2)]);
        m.truncate(m.len() - 3);
        assert!(matches!(
            parse(Path::new("t.model"), m),
            Err(Error::TokenizerFormat { .. })
        ));
        // A JSON file is no protobuf: `{` is field 15 of wire type 3.
        assert!(matches!(
            parse(Path::new("t.json"), b"{\"a\": 1}".to_vec()),
            Err(Error::TokenizerFormat { offset: 0, .. })
        ));
        assert!(matches!(
            parse(Path::new("t.model"), Vec::new()),
            Err(Error::TokenizerFormat { .. })
        ));
        assert!(matches!(
            parse(Path::new("t.model"), model(&[("<unk>", 2), ("a", 1)])),
            Err(Error::TokenizerPieces { pieces: 2, .. })
        ));
        // A length far past the end of the data is refused, not allocated.
        let mut huge = Vec::new();
        varint(1 << 3 | 2, &mut huge);
        varint(u64::MAX >> 1, &mut huge);
        assert!(matches!(
            parse(Path::new("t.model"), huge),
            Err(Error::TokenizerFormat { .. })
        ));
    }
}
