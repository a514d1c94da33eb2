//! An allowlist pickle reader for the subset `torch.save` writes for a state dict, and the matching writer.
//!
//! Spec: the pickle opcodes of CPython's `Lib/pickletools.py` (protocols 2 to 5), and the
//! object layout PyTorch's `torch/serialization.py` (`_save`, `persistent_id`) and
//! `torch/_utils.py` (`_rebuild_tensor_v2`) give a state dict. The allowlist mirrors
//! `torch.load(weights_only=True)` (`torch/_weights_only_unpickler.py`): a global outside it
//! is refused the moment it is named, so no callable is ever looked up, let alone run.
//! Nothing here executes anything: `REDUCE` is interpreted only for the few allowed
//! callables, producing plain data.
//!
//! Work and memory are bounded by the pickle's own length: values are shared (the memo
//! holds references, not copies), every string, memo fetch and produced tensor name counts
//! its bytes against a budget of [`BYTES_PER_PICKLE_BYTE`] times that length, values count
//! against [`MAX_NODES`], and dicts are indexed so that building one is linear. Tensors are
//! found wherever they sit in dicts, lists and tuples (`layers.0.weight`); one that cannot be
//! named is an error, never dropped.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::{DType, Error, Result, TensorSpec};

/// Most values the stack may hold at once.
const MAX_STACK: usize = 1 << 20;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Deepest container nesting (a state dict in a checkpoint dict is depth 3 or so).
const MAX_DEPTH: u32 = 64;
/// Most values created or copied in total, so `BINGET` of a large container in a loop cannot
/// grow memory without end.
const MAX_NODES: u64 = 1 << 21;
/// Longest `GLOBAL` module or name line.
const MAX_GLOBAL_LINE: usize = 256;
/// Bytes of strings and tensor names a pickle may produce per byte of its own length: each
/// string it holds counts once, a memo fetch counts again, and a name counts its whole
/// dotted path. A state dict produces little more than its own length.
const BYTES_PER_PICKLE_BYTE: u64 = 16;
/// Budget every pickle gets on top, so tiny pickles with a few prefixes are never refused.
const BYTES_SLACK: u64 = 1 << 20;
/// Longest tensor rank accepted.
const MAX_RANK: usize = 64;

/// A callable or class the allowlist admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Device,
    Storage(DType),
}

/// PyTorch's legacy typed-storage class names, which `torch.save` still writes for every dtype.
const STORAGE_CLASSES: [(&str, DType); 10] = [
    ("DoubleStorage", DType::F64),
    ("FloatStorage", DType::F32),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ShortStorage", DType::I16),
    ("CharStorage", DType::I8),
    ("ByteStorage", DType::U8),
    ("BoolStorage", DType::Bool),
];

/// The storage class `torch.save` names for a dtype.
pub(crate) fn storage_class(dtype: DType) -> &'static str {
    STORAGE_CLASSES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map(|(n, _)| *n)
        .unwrap_or("ByteStorage")
}

/// Resolves a `module.name` against the allowlist.
fn allowed(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", "device") => Some(Global::Device),
        ("torch", class) => STORAGE_CLASSES
            .iter()
            .find(|(n, _)| *n == class)
            .map(|(_, d)| Global::Storage(*d)),
        _ => None,
    }
}

/// A storage a tensor views: a record `data/<key>` of `numel` elements of `dtype`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: Rc<str>,
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// Offset of the first element in the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub strides: Vec<usize>,
}

/// What a value costs, cached in containers so that asking is O(1): nesting depth, values
/// inside (itself included), bytes of strings and names inside, and tensors inside.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    depth: u32,
    nodes: u64,
    bytes: u64,
    tensors: u64,
}

impl Cost {
    /// The cost of an empty container.
    const CONTAINER: Cost = Cost {
        depth: 1,
        nodes: 1,
        bytes: 0,
        tensors: 0,
    };

    /// Adds a value held inside a container of this cost.
    fn add(&mut self, inner: Cost) {
        self.depth = self.depth.max(inner.depth.saturating_add(1));
        self.nodes = self.nodes.saturating_add(inner.nodes);
        self.bytes = self.bytes.saturating_add(inner.bytes);
        self.tensors = self.tensors.saturating_add(inner.tensors);
    }
}

/// A dict key that can be looked up: the kinds a state dict's keys are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Str(Rc<str>),
    Int(i64),
}

impl Key {
    fn of(v: &Value) -> Option<Key> {
        match v {
            Value::Str(s) => Some(Key::Str(Rc::clone(s))),
            Value::Int(i) => Some(Key::Int(*i)),
            _ => None,
        }
    }
}

/// A dict's items in insertion order, with an index so that assigning to a key is one
/// lookup, not a scan of the dict (a `SETITEMS` of 300 000 keys stays linear).
#[derive(Debug, Clone, Default)]
struct Items {
    pairs: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

impl Items {
    /// Assigns `v` to `k`: a later assignment to the same key replaces the earlier one, as in
    /// Python; keys that are neither strings nor ints never compare equal.
    fn set(&mut self, k: Value, v: Value) {
        let Some(key) = Key::of(&k) else {
            self.pairs.push((k, v));
            return;
        };
        match self.index.get(&key) {
            Some(&i) => {
                if let Some(slot) = self.pairs.get_mut(i) {
                    slot.1 = v;
                }
            }
            None => {
                self.index.insert(key, self.pairs.len());
                self.pairs.push((k, v));
            }
        }
    }
}

/// A value on the unpickler's stack: plain data only.
///
/// Strings and containers are reference-counted, so the memo and the stack share them:
/// `BINGET` of a large string or dict costs nothing to copy (it is still counted against
/// the budgets, by its cached [`Cost`]). A shared container is copied only when mutated.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Seq {
        list: bool,
        items: Rc<Vec<Value>>,
        cost: Cost,
    },
    Dict {
        items: Rc<Items>,
        cost: Cost,
    },
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    Device,
}

impl Value {
    fn empty_seq(list: bool) -> Value {
        Value::Seq {
            list,
            items: Rc::new(Vec::new()),
            cost: Cost::CONTAINER,
        }
    }

    fn empty_dict() -> Value {
        Value::Dict {
            items: Rc::new(Items::default()),
            cost: Cost::CONTAINER,
        }
    }

    fn cost(&self) -> Cost {
        let leaf = |bytes: usize, tensors: u64| Cost {
            depth: 0,
            nodes: 1,
            bytes: bytes as u64,
            tensors,
        };
        match self {
            Value::Seq { cost, .. } | Value::Dict { cost, .. } => *cost,
            Value::Str(s) => leaf(s.len(), 0),
            Value::Storage(st) => leaf(st.key.len(), 0),
            Value::Tensor(t) => leaf(t.storage.key.len(), 1),
            _ => leaf(0, 0),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Seq { list: true, .. } => "list",
            Value::Seq { list: false, .. } => "tuple",
            Value::Dict { .. } => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Device => "device",
        }
    }
}

/// The most bytes of strings and names a pickle of `len` bytes may produce.
pub(crate) fn budget(len: usize) -> u64 {
    (len as u64)
        .saturating_mul(BYTES_PER_PICKLE_BYTE)
        .saturating_add(BYTES_SLACK)
}

/// The interpreter's state.
struct Machine<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for messages.
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: u64,
    /// Bytes of strings and names produced so far, against [`Machine::budget`].
    bytes: u64,
    /// The most bytes of strings and names this pickle may produce: a multiple of its length.
    budget: u64,
}

impl<'a> Machine<'a> {
    fn new(path: &'a Path, data: &'a [u8]) -> Machine<'a> {
        let budget = budget(data.len());
        Machine {
            path,
            data,
            pos: 0,
            op_at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: 0,
            bytes: 0,
            budget,
        }
    }

    /// Counts `n` bytes of strings or names against the budget.
    fn spend(&mut self, n: u64) -> Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.budget {
            return Err(Error::PickleBudget {
                path: self.path.to_path_buf(),
                offset: self.op_at as u64,
                budget: self.budget,
                pickle_len: self.data.len() as u64,
            });
        }
        Ok(())
    }

    /// Counts the copy a mutation of the top container makes when the memo shares it.
    fn count_copy_of_top(&mut self) -> Result<()> {
        let len = match self.stack.last() {
            Some(Value::Seq { items, .. }) if Rc::strong_count(items) > 1 => items.len(),
            Some(Value::Dict { items, .. }) if Rc::strong_count(items) > 1 => items.pairs.len(),
            _ => 0,
        };
        self.count(len as u64)
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Pickle {
            path: self.path.to_path_buf(),
            offset: self.op_at as u64,
            detail: detail.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.err("length overflows"))?;
        let data: &'a [u8] = self.data;
        let bytes = data
            .get(self.pos..end)
            .ok_or_else(|| self.err(format!("needs {n} bytes, the stream ends first")))?;
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    fn line(&mut self) -> Result<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let window = rest
            .get(..MAX_GLOBAL_LINE.min(rest.len()))
            .unwrap_or_default();
        let nl = window
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL line without newline (or too long)"))?;
        let text = window.get(..nl).unwrap_or_default();
        let s = std::str::from_utf8(text)
            .map_err(|_| self.err("GLOBAL line is not text"))?
            .to_string();
        // `nl` indexes a byte of the window, so adding one cannot overflow.
        self.pos = self.pos.saturating_add(nl.saturating_add(1));
        Ok(s)
    }

    fn count(&mut self, n: u64) -> Result<()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.err(format!("more than {MAX_NODES} values: not a state dict")));
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("stack exceeds {MAX_STACK} entries")));
        }
        self.count(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let at = self.op_at as u64;
        let path = self.path;
        self.stack.last_mut().ok_or_else(|| Error::Pickle {
            path: path.to_path_buf(),
            offset: at,
            detail: "stack underflow".into(),
        })
    }

    fn seq(&self, list: bool, items: Vec<Value>) -> Result<Value> {
        let mut cost = Cost::CONTAINER;
        for v in &items {
            cost.add(v.cost());
        }
        if cost.depth > MAX_DEPTH {
            return Err(self.err(format!("containers nest deeper than {MAX_DEPTH}")));
        }
        Ok(Value::Seq {
            list,
            items: Rc::new(items),
            cost,
        })
    }

    fn dict(&self, pairs: Vec<(Value, Value)>) -> Result<Value> {
        let mut cost = Cost::CONTAINER;
        let mut items = Items::default();
        for (k, v) in pairs {
            cost.add(k.cost());
            cost.add(v.cost());
            items.set(k, v);
        }
        if cost.depth > MAX_DEPTH {
            return Err(self.err(format!("containers nest deeper than {MAX_DEPTH}")));
        }
        Ok(Value::Dict {
            items: Rc::new(items),
            cost,
        })
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        // Sharing, not copying: the memo holds another reference to the same value.
        let v = self.top()?.clone();
        self.count(1)?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(self.err(format!("memo exceeds {MAX_MEMO} entries")));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))?;
        // The value is shared, but everything inside it counts again: what a later pass
        // (naming tensors) walks, and what a consumer would build, is the unshared tree.
        let cost = v.cost();
        self.count(cost.nodes)?;
        self.spend(cost.bytes)?;
        self.push(v)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match allowed(module, name) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(Error::DisallowedGlobal {
                path: self.path.to_path_buf(),
                module: module.to_string(),
                name: name.to_string(),
                offset: self.op_at as u64,
            }),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
        self.count_copy_of_top()?;
        let outcome = match self.top()? {
            Value::Dict { items, cost } => {
                let items = Rc::make_mut(items);
                for (k, v) in pairs {
                    cost.add(k.cost());
                    cost.add(v.cost());
                    items.set(k, v);
                }
                Ok(cost.depth)
            }
            other => Err(other.kind()),
        };
        self.nested(outcome, "SETITEM")
    }

    /// Turns the outcome of a container mutation into the crate's error: too deep, or the wrong kind.
    fn nested(&self, outcome: std::result::Result<u32, &'static str>, op: &str) -> Result<()> {
        match outcome {
            Ok(depth) if depth <= MAX_DEPTH => Ok(()),
            Ok(_) => Err(self.err(format!("containers nest deeper than {MAX_DEPTH}"))),
            Err(kind) => Err(self.err(format!("{op} on a {kind}"))),
        }
    }

    fn append(&mut self, values: Vec<Value>) -> Result<()> {
        self.count_copy_of_top()?;
        let outcome = match self.top()? {
            Value::Seq {
                list: true,
                items,
                cost,
            } => {
                for v in &values {
                    cost.add(v.cost());
                }
                Rc::make_mut(items).extend(values);
                Ok(cost.depth)
            }
            other => Err(other.kind()),
        };
        self.nested(outcome, "APPEND")
    }

    fn int_arg(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| self.err(format!("{what} {i} is negative")))
            }
            other => Err(self.err(format!("{what} is a {}, not an int", other.kind()))),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let Value::Seq { items, .. } = v else {
            return Err(self.err(format!("{what} is a {}, not a tuple", v.kind())));
        };
        if items.len() > MAX_RANK {
            return Err(self.err(format!("{what} has more than {MAX_RANK} dimensions")));
        }
        items.iter().map(|i| self.int_arg(i, what)).collect()
    }

    /// Interprets `REDUCE` for the allowed callables; everything else is an error.
    fn reduce(&mut self, func: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = func else {
            return Err(self.err(format!("REDUCE calls a {}", func.kind())));
        };
        let Value::Seq { items: args, .. } = args else {
            return Err(self.err(format!("REDUCE arguments are a {}", args.kind())));
        };
        match g {
            Global::OrderedDict => {
                let mut pairs = Vec::new();
                if let Some(Value::Seq { items: given, .. }) = args.first() {
                    for pair in given.iter() {
                        match pair {
                            Value::Seq { items: kv, .. } if kv.len() == 2 => {
                                if let (Some(k), Some(v)) = (kv.first(), kv.get(1)) {
                                    pairs.push((k.clone(), v.clone()));
                                }
                            }
                            _ => return Err(self.err("OrderedDict item is not a pair")),
                        }
                    }
                }
                self.dict(pairs)
            }
            Global::RebuildTensorV2 => {
                let (Some(storage), Some(offset), Some(size), Some(stride)) =
                    (args.first(), args.get(1), args.get(2), args.get(3))
                else {
                    return Err(
                        self.err("_rebuild_tensor_v2 needs storage, offset, size and stride")
                    );
                };
                let Value::Storage(storage) = storage else {
                    return Err(self.err(format!("_rebuild_tensor_v2 over a {}", storage.kind())));
                };
                let offset = self.int_arg(offset, "storage offset")?;
                let shape = self.int_tuple(size, "size")?;
                let strides = self.int_tuple(stride, "stride")?;
                if shape.len() != strides.len() {
                    return Err(self.err("size and stride differ in length"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset,
                    shape,
                    strides,
                }))
            }
            Global::RebuildParameter => match args.first().cloned() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                other => Err(self.err(format!(
                    "_rebuild_parameter over a {}",
                    other.as_ref().map_or("nothing", Value::kind)
                ))),
            },
            Global::Device => Ok(Value::Device),
            Global::Storage(_) => {
                Err(self.err("storage classes are only used as persistent-id tags"))
            }
        }
    }

    /// Turns a persistent id `('storage', StorageClass, key, location, numel)` into a storage reference.
    fn persistent(&self, pid: Value) -> Result<Value> {
        let Value::Seq { items, .. } = pid else {
            return Err(self.err(format!("persistent id is a {}, not a tuple", pid.kind())));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _location, Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let numel = u64::try_from(*numel).map_err(|_| self.err("negative storage size"))?;
                Ok(Value::Storage(StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel,
                }))
            }
            _ => {
                Err(self
                    .err("persistent id is not ('storage', <StorageClass>, key, location, numel)"))
            }
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_at = self.pos;
            let [op] = self.take_array::<1>()?;
            match op {
                0x80 => {
                    let [proto] = self.take_array::<1>()?;
                    if !(2..=5).contains(&proto) {
                        return Err(self.err(format!("pickle protocol {proto} (2 to 5 are read)")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint for buffered reading; the data follows inline.
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.err("too many MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Value::empty_dict())?,
                b']' => self.push(Value::empty_seq(true))?,
                b')' => self.push(Value::empty_seq(false))?,
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'K' => {
                    let [b] = self.take_array::<1>()?;
                    self.push(Value::Int(i64::from(b)))?;
                }
                b'M' => {
                    let b = self.take_array::<2>()?;
                    self.push(Value::Int(i64::from(u16::from_le_bytes(b))))?;
                }
                b'J' => {
                    let b = self.take_array::<4>()?;
                    self.push(Value::Int(i64::from(i32::from_le_bytes(b))))?;
                }
                0x8a => {
                    let [n] = self.take_array::<1>()?;
                    let n = usize::from(n);
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let bytes = self.take(n)?;
                    let mut buf = [0u8; 8];
                    if let Some(dst) = buf.get_mut(..n) {
                        dst.copy_from_slice(bytes);
                    }
                    // Sign-extend from the top byte, two's complement little-endian.
                    if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        for b in buf.iter_mut().skip(n) {
                            *b = 0xff;
                        }
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    // BINFLOAT: the value itself never matters to a state dict.
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'X' | 0x8c | 0x8d => {
                    let len = match op {
                        0x8c => u64::from(self.take_array::<1>()?[0]),
                        b'X' => u64::from(u32::from_le_bytes(self.take_array::<4>()?)),
                        _ => u64::from_le_bytes(self.take_array::<8>()?),
                    };
                    let len =
                        usize::try_from(len).map_err(|_| self.err("string length overflows"))?;
                    // `take` checks the length against the bytes really present before copying.
                    let bytes = self.take(len)?;
                    let s =
                        std::str::from_utf8(bytes).map_err(|_| self.err("string is not UTF-8"))?;
                    self.spend(bytes.len() as u64)?;
                    self.push(Value::Str(Rc::from(s)))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.seq(false, items)?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    // TUPLE1..TUPLE3: 1 to 3 items, as the match arm bounds `op`.
                    let n = usize::from(op.saturating_sub(0x84));
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.seq(false, items)?;
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    self.global(&module, &name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD sets attributes from a state: an OrderedDict's `_metadata`, a
                    // tensor subclass's state. Neither matters for the data; the state is dropped.
                    let state = self.pop()?;
                    if state.cost().tensors > 0 {
                        return Err(
                            self.err("BUILD with a state holding tensors: they would be dropped")
                        );
                    }
                    let kind = self.top()?.kind();
                    if !matches!(kind, "dict" | "tensor") {
                        return Err(self.err(format!("BUILD on a {kind}")));
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of values"));
                    }
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    self.set_items(pairs)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'q' => {
                    let [k] = self.take_array::<1>()?;
                    self.memo_put(u32::from(k))?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.take_array::<4>()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflows"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let [k] = self.take_array::<1>()?;
                    self.memo_get(u32::from(k))?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.take_array::<4>()?);
                    self.memo_get(k)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?;
                }
                other => {
                    return Err(self.err(format!(
                        "opcode 0x{other:02x} is outside the state-dict subset this reader accepts"
                    )))
                }
            }
        }
    }
}

/// Joins a container's name and a key the way torch names state-dict entries.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Machine<'_> {
    /// Collects the tensors of a (possibly nested) container, joining dict keys and list or
    /// tuple indices with `.` (`layers.0.weight`). Every produced name counts against the
    /// byte budget, and no tensor is left out: one that cannot be named is an error.
    fn flatten(
        &mut self,
        v: &Value,
        prefix: &str,
        out: &mut Vec<(String, TensorRef)>,
    ) -> Result<()> {
        match v {
            Value::Dict { items, cost } if cost.tensors > 0 => {
                for (k, v) in &items.pairs {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        other if other.cost().tensors > 0 || v.cost().tensors > 0 => {
                            return Err(Error::PickleTensorKey {
                                path: self.path.to_path_buf(),
                                parent: prefix.to_string(),
                                key_kind: other.kind(),
                            })
                        }
                        _ => continue,
                    };
                    self.named(v, join(prefix, &key), out)?;
                }
            }
            Value::Seq { items, cost, .. } if cost.tensors > 0 => {
                for (i, v) in items.iter().enumerate() {
                    self.named(v, join(prefix, &i.to_string()), out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Names one value found at `name`: a tensor is produced, a container followed.
    fn named(&mut self, v: &Value, name: String, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
        match v {
            Value::Tensor(t) => {
                self.spend(name.len() as u64)?;
                out.push((name, t.clone()));
                Ok(())
            }
            _ => self.flatten(v, &name, out),
        }
    }
}

/// A `data.pkl`'s contents: its tensors in the order the pickle lists them, and the top-level entries that
/// hold no tensor (a training checkpoint's `epoch`, `args`), described in a few words each.
pub(crate) struct StateDict {
    pub tensors: Vec<(String, TensorRef)>,
    pub others: Vec<String>,
}

/// Unpickles a `data.pkl` into its tensors and the top-level entries that hold none.
pub(crate) fn read_pickle(path: &Path, data: &[u8]) -> Result<StateDict> {
    let mut m = Machine::new(path, data);
    let root = m.run()?;
    let Value::Dict { items, .. } = &root else {
        return Err(m.err(format!(
            "the pickle holds a {}, not a state dict",
            root.kind()
        )));
    };
    let others = items
        .pairs
        .iter()
        .filter(|(_, v)| v.cost().tensors == 0)
        .map(|(k, v)| {
            let key = match k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => format!("({})", other.kind()),
            };
            match v {
                Value::Int(i) => format!("{key} = {i}"),
                other => format!("{key} ({})", other.kind()),
            }
        })
        .collect();
    let mut tensors = Vec::new();
    m.flatten(&root, "", &mut tensors)?;
    Ok(StateDict { tensors, others })
}

/// Unpickles a `data.pkl` into its tensors, in the order the pickle lists them.
pub(crate) fn read_state_dict(path: &Path, data: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine::new(path, data);
    let root = m.run()?;
    if !matches!(root, Value::Dict { .. }) {
        return Err(m.err(format!(
            "the pickle holds a {}, not a state dict",
            root.kind()
        )));
    }
    let mut out = Vec::new();
    m.flatten(&root, "", &mut out)?;
    Ok(out)
}

/// Appends a pickle int in the shortest opcode that holds it.
pub(crate) fn put_int(out: &mut Vec<u8>, v: u64) {
    if let Ok(b) = u8::try_from(v) {
        out.push(b'K');
        out.push(b);
    } else if let Ok(w) = u16::try_from(v) {
        out.push(b'M');
        out.extend_from_slice(&w.to_le_bytes());
    } else if let Ok(i) = i32::try_from(v) {
        out.push(b'J');
        out.extend_from_slice(&i.to_le_bytes());
    } else {
        // LONG1 with eight bytes: every count written here is a byte count of a real
        // allocation, so it stays below 2^63 and the two's-complement sign bit is clear.
        out.push(0x8a);
        out.push(8);
        out.extend_from_slice(&v.min(i64::MAX as u64).to_le_bytes());
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

/// Contiguous (row-major) strides as torch computes them: a size-0 or size-1 axis counts as 1.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d.max(1));
    }
    strides
}

/// Writes the protocol-2 pickle of an `OrderedDict` of tensors, tensor `i` over storage key `i`,
/// as `torch.save` lays it out.
pub(crate) fn write_state_dict(specs: &[TensorSpec]) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    put_global(&mut out, "collections", "OrderedDict");
    out.extend_from_slice(b")R");
    if !specs.is_empty() {
        out.push(b'(');
    }
    for (i, spec) in specs.iter().enumerate() {
        let numel: usize = spec.shape.iter().product();
        put_str(&mut out, &spec.name);
        put_global(&mut out, "torch._utils", "_rebuild_tensor_v2");
        out.extend_from_slice(b"((");
        put_str(&mut out, "storage");
        put_global(&mut out, "torch", storage_class(spec.dtype));
        put_str(&mut out, &i.to_string());
        put_str(&mut out, "cpu");
        put_int(&mut out, numel as u64);
        out.extend_from_slice(b"tQ");
        put_int(&mut out, 0);
        out.push(b'(');
        for &d in &spec.shape {
            put_int(&mut out, d as u64);
        }
        out.extend_from_slice(b"t(");
        for s in contiguous_strides(&spec.shape) {
            put_int(&mut out, s as u64);
        }
        out.push(b't');
        out.push(0x89);
        put_global(&mut out, "collections", "OrderedDict");
        out.extend_from_slice(b")Rt");
        out.push(b'R');
    }
    if !specs.is_empty() {
        out.push(b'u');
    }
    out.push(b'.');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8]) -> Result<Vec<(String, TensorRef)>> {
        read_state_dict(Path::new("t.pt"), data)
    }

    #[test]
    fn written_state_dicts_read_back() {
        let specs = vec![
            TensorSpec {
                name: "a.weight".into(),
                dtype: DType::F32,
                shape: vec![3, 70000],
            },
            TensorSpec {
                name: "b".into(),
                dtype: DType::BF16,
                shape: vec![],
            },
            TensorSpec {
                name: "c".into(),
                dtype: DType::Bool,
                shape: vec![0, 2],
            },
        ];
        let got = read(&write_state_dict(&specs)).unwrap();
        assert_eq!(got.len(), 3);
        for (i, ((name, t), spec)) in got.iter().zip(&specs).enumerate() {
            assert_eq!(name, &spec.name);
            assert_eq!(t.storage.dtype, spec.dtype);
            assert_eq!(&*t.storage.key, i.to_string());
            assert_eq!(t.shape, spec.shape);
            assert_eq!(t.strides, contiguous_strides(&spec.shape));
        }
        assert_eq!(got[0].1.strides, vec![70000, 1]);
        assert_eq!(got[0].1.storage.numel, 210_000);
    }

    #[test]
    fn disallowed_global_is_refused_by_name() {
        // cos\nsystem\n(S'touch marker'\ntR. : the classic os.system pickle.
        let data = b"\x80\x02cos\nsystem\nX\x0c\x00\x00\x00touch markerq\x00\x85R.";
        let err = read(data).unwrap_err();
        assert!(
            matches!(&err, Error::DisallowedGlobal { module, name, .. } if module == "os" && name == "system"),
            "{err}"
        );
        assert!(err.to_string().contains("os.system"));
        // STACK_GLOBAL too.
        let data = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let err = read(data).unwrap_err();
        assert!(err.to_string().contains("builtins.eval"), "{err}");
    }

    #[test]
    fn short_stacks_and_bad_streams_are_errors_not_panics() {
        for data in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02R.",
            b"\x80\x02\x86.",
            b"\x80\x02t.",
            b"\x80\x02u.",
            b"\x80\x02(}u.",
            b"\x80\x02h\x05.",
            b"\x80\x02Q.",
            b"\x80\x02X\xff\xff\xff\xff.",
            b"\x80\x02\x8a\x20.",
            b"\x80\x02K\x01.",
            b"\x80\x02\xff.",
            b"\x80\x02ccollections\nOrderedDict\nK\x01R.",
            b"\x80\x02c",
        ] {
            assert!(read(data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn deep_nesting_and_memo_bombs_are_bounded() {
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert!(read(&deep).unwrap_err().to_string().contains("nest"));

        // A list that doubles by appending itself from the memo, over and over.
        let mut bomb = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            bomb.extend_from_slice(b"(h\x00h\x00eq\x00");
        }
        bomb.push(b'.');
        assert!(read(&bomb).is_err());
    }

    #[test]
    fn nested_checkpoints_are_followed() {
        // {"state_dict": {"w": tensor}, "epoch": 3}, written by hand.
        let specs = vec![TensorSpec {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![2],
        }];
        let inner = write_state_dict(&specs);
        // Strip the inner pickle's PROTO and STOP and nest it in a plain dict.
        let mut data = vec![0x80, 2, b'}', b'('];
        put_str(&mut data, "state_dict");
        data.extend_from_slice(&inner[2..inner.len() - 1]);
        put_str(&mut data, "epoch");
        put_int(&mut data, 3);
        data.extend_from_slice(b"u.");
        let got = read(&data).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "state_dict.w");
    }

    #[test]
    fn ints_round_trip_through_every_width() {
        for v in [
            0u64,
            255,
            256,
            65535,
            65536,
            i32::MAX as u64,
            1 << 40,
            u64::MAX >> 1,
        ] {
            let mut data = vec![0x80, 2];
            put_int(&mut data, v);
            data.push(b'.');
            let mut m = Machine::new(Path::new("x"), &data);
            match m.run().unwrap() {
                Value::Int(i) => assert_eq!(i as u64, v),
                other => panic!("{other:?}"),
            }
        }
    }
}
