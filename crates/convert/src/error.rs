//! The convert crate's one error type: every variant carries the tensor, option or value at fault and, in its
//! message, the fix.
//!
//! Messages never repeat the text of their `#[source]`: a caller that shows the whole chain (as `vitconv`'s
//! `main` does) prints each cause once.

use std::path::PathBuf;

/// Everything that can go wrong while recognising a checkpoint or converting it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the source or writing the output failed in the tensor-file layer (its message names the file).
    #[error(transparent)]
    Tensors(#[from] vitconv_tensors::Error),

    /// No source family claims the keys: not a JAX/Flax ViT, possibly a file already in a PyTorch layout.
    #[error(
        "not a recognised ViT checkpoint: {}; no embedding/kernel (looked at the top and under opt/target/ and params/)",
        not_a_source(*tensors, *layout)
    )]
    NotASource {
        /// How many tensors the file holds.
        tensors: usize,
        /// The PyTorch layout the keys form, when they form one.
        layout: Option<&'static str>,
    },

    /// A Hugging Face Flax model (`flax_model.msgpack` of `FlaxViTModel`, `FlaxCLIPModel`, ...), whose module
    /// names no source family reads.
    #[error("a Hugging Face Flax {class} checkpoint ({tensors} tensors under {root}): no source family reads Hugging Face Flax names yet; convert the original JAX checkpoint instead, or load this one with transformers 4.x (from_pretrained(..., from_flax=True)), which writes PyTorch weights")]
    HfFlax {
        /// The transformers class the names belong to (`FlaxViTModel`, `FlaxCLIPModel`, ...).
        class: &'static str,
        /// The module tree the names start with (`vit/`, `vision_model/`, ...).
        root: &'static str,
        /// How many tensors the file holds.
        tensors: usize,
    },

    /// A source family was asked to read a file without its root tensor.
    #[error("not a recognised ViT checkpoint: {tensors} tensors; no {looked_for}")]
    NoRoot {
        /// How many tensors the file holds.
        tensors: usize,
        /// The root tensor and where it was looked for.
        looked_for: &'static str,
    },

    /// The two towers of an image-text checkpoint end in embeddings of different widths.
    #[error("two-tower checkpoint: the image tower gives {image}-wide embeddings and the text tower {text}-wide; their dot product needs one width (check img/head and txt/head)")]
    EmbedMismatch {
        /// The image tower's output width (its head's, or its width without one).
        image: usize,
        /// The text tower's output width.
        text: usize,
    },

    /// The `--tokenizer` file is larger than any SentencePiece model.
    #[error("{}: {size} bytes is larger than a SentencePiece model ({max} at most); --tokenizer takes the tokenizer's .model file", path.display())]
    TokenizerTooLarge {
        /// The tokenizer file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },

    /// The `--tokenizer` file is not a SentencePiece model (a protobuf `ModelProto`).
    #[error("{}: not a SentencePiece model: at byte {offset}, expected {expected}; --tokenizer takes the tokenizer's .model file (spiece.model)", path.display())]
    TokenizerFormat {
        /// The tokenizer file.
        path: PathBuf,
        /// Where the data stops making sense.
        offset: usize,
        /// What was expected there.
        expected: &'static str,
    },

    /// The SentencePiece model fits neither tokenizer kind vitconv writes (SigLIP's `</s>` convention or
    /// Gemma's `<pad> <eos> <bos> <unk>` as ids 0 to 3).
    #[error("{}: the SentencePiece model's {pieces} pieces fit neither tokenizer kind: SigLIP's needs {siglip_missing}; Gemma's needs <pad> <eos> <bos> <unk> as ids 0 to 3, and ids 0 to 3 are {first:?}", path.display())]
    TokenizerPieces {
        /// The tokenizer file.
        path: PathBuf,
        /// How many pieces it has.
        pieces: usize,
        /// What SigLIP's kind lacks (`</s>`, an unknown piece, or both).
        siglip_missing: &'static str,
        /// The texts of the first four pieces (at most 32 characters each), where Gemma's kind has its own.
        first: Vec<String>,
    },

    /// A Gemma-kind SentencePiece model of an algorithm the fast tokenizer vitconv writes cannot express.
    #[error("{}: the SentencePiece model's trainer_spec.model_type is {model_type}; vitconv writes Gemma-kind tokenizers of type unigram (1) or bpe (2) only", path.display())]
    TokenizerModelType {
        /// The tokenizer file.
        path: PathBuf,
        /// `trainer_spec.model_type` (3 word, 4 char, or an unknown value).
        model_type: u64,
    },

    /// A Gemma-kind SentencePiece model whose text normalisation the fast tokenizer vitconv writes would not
    /// reproduce exactly.
    #[error("{}: the SentencePiece model sets {setting}; vitconv writes Gemma-kind tokenizers with Gemma's normalisation only ({expected}), so that the fast tokenizer gives exactly the model's ids", path.display())]
    TokenizerNormalizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The setting and its value (`normalizer_spec.add_dummy_prefix true`).
        setting: &'static str,
        /// What Gemma's model sets.
        expected: &'static str,
    },

    /// The SentencePiece model has more pieces than the text tower has token embeddings.
    #[error("{}: the tokenizer has {pieces} pieces but the text tower embeds {vocab} token ids; it belongs to another model", path.display())]
    TokenizerVocab {
        /// The tokenizer file.
        path: PathBuf,
        /// How many pieces it has.
        pieces: usize,
        /// Rows of the text tower's token embedding.
        vocab: usize,
    },

    /// `--tokenizer` was given for an output without a text tower.
    #[error("--tokenizer is for outputs with a text tower; this output ({what}) has none (drop --tokenizer)")]
    TokenizerWithoutText {
        /// What the output is.
        what: &'static str,
    },

    /// The conversion was cancelled (an interrupt): its temporaries were removed and no output was touched.
    #[error("interrupted; removed the partial output")]
    Cancelled,

    /// `--tower image` was given for a model that has one tower.
    #[error("--tower image selects the image tower of a two-tower model; this checkpoint has only one tower (drop --tower)")]
    NotTwoTower,

    /// A vision-language checkpoint (PaliGemma) converted without `--tower image`: vitconv converts its image
    /// tower and projection, never its language model.
    #[error("a Pali{} checkpoint: its {} language model ({}) is not converted by vitconv; pass --tower image to convert the image tower and its projection to the LLM width", crate::model::gemma_name(*generation), crate::model::gemma_name(*generation), crate::model::size_words(*params, *bytes))]
    LanguageModelNotConverted {
        /// The Gemma generation (1 or 2).
        generation: u8,
        /// The language model's parameters.
        params: u64,
        /// Its bytes as stored.
        bytes: u64,
    },

    /// A tensor the recognised family needs is not in the file.
    #[error("{recognised}: tensor {tensor}{} is missing", role.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    MissingTensor {
        /// What the file was recognised as.
        recognised: String,
        /// The tensor's name.
        tensor: String,
        /// The part of the model the tensor would be, where the reader knows it.
        role: Option<String>,
    },

    /// The file has a patch embedding but no encoder blocks under any of the names looked for.
    #[error("{recognised}: no encoder blocks ({})", no_blocks(looked_for))]
    NoBlocks {
        /// What the file was recognised as.
        recognised: String,
        /// The first block's tensor, under each naming tried.
        looked_for: Vec<String>,
    },

    /// The ResNet stem of a hybrid hands on another width than the patch embedding reads.
    #[error("{recognised}: the stem ends with {stem_out} channels (stages {stages:?}, width {width}) but {embed} reads {embed_in}")]
    StemMismatch {
        /// What the file was recognised as.
        recognised: String,
        /// Channels out of the stem's last stage.
        stem_out: usize,
        /// Units per stage.
        stages: Vec<usize>,
        /// The root convolution's width.
        width: usize,
        /// The patch embedding kernel.
        embed: String,
        /// Input channels of the patch embedding.
        embed_in: usize,
    },

    /// A tensor the mapping would not use; vitconv maps every tensor or refuses.
    #[error("tensor {name} {shape:?} is not part of a {recognised} checkpoint; vitconv converts every tensor or refuses, so remove it or report the layout")]
    Unmapped {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What the file was recognised as.
        recognised: String,
    },

    /// A tensor holds a non-float type where weights are expected.
    #[error("tensor {name}: dtype {dtype} is not a floating-point type")]
    NotFloat {
        /// The tensor's name.
        name: String,
        /// Its stored type.
        dtype: String,
    },

    /// A tensor has another number of dimensions than its part of the model.
    #[error("tensor {name}: expected shape {expected}, found {found:?} ({role})")]
    Rank {
        /// The tensor's name.
        name: String,
        /// The expected dimensions, by meaning (`[p, p, in, hidden]`).
        expected: &'static str,
        /// The shape in the file.
        found: Vec<usize>,
        /// The part of the model the tensor is.
        role: &'static str,
    },

    /// The text tower's token embedding has no rows: no token id, not even `</s>`, could be embedded.
    #[error("tensor {name}: the text token embedding has 0 rows (shape {found:?}), so the text tower has a vocabulary of 0 token ids; a tokenizer's pieces need one row each")]
    EmptyVocabulary {
        /// The token embedding's name.
        name: String,
        /// Its shape `[0, width]`.
        found: Vec<usize>,
    },

    /// A tensor's shape contradicts the sizes read off the rest of the checkpoint.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?} ({role})")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape the other tensors imply.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
        /// The part of the model the tensor is.
        role: String,
    },

    /// A GroupNorm parameter of a hybrid stem that is neither `[C]` nor `[1, 1, 1, C]`.
    #[error("tensor {name}: expected shape [{channels}] or [1, 1, 1, {channels}], found {found:?} (GroupNorm parameter of the preceding convolution)")]
    GroupNormShape {
        /// The tensor's name.
        name: String,
        /// The channels of the convolution before it.
        channels: usize,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A block tensor of a stacked (scan) checkpoint without one slice per block.
    #[error("tensor {name}: expected shape [{count}, ...] (one slice per block), found {found:?} (a stacked block tensor)")]
    NotStacked {
        /// The tensor's name.
        name: String,
        /// The number of blocks.
        count: usize,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// The stacked LayerNorm that gives a scan checkpoint's depth is not `[depth, hidden]`.
    #[error("tensor {name}: expected shape [depth, {hidden}] with depth > 0, found {found:?} (one LayerNorm scale per stacked block)")]
    StackDepth {
        /// The tensor's name.
        name: String,
        /// The hidden width.
        hidden: usize,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// An encoder deeper than [`crate::model::MAX_DEPTH`]: a lying header, refused before a record per block
    /// is made.
    #[error("tensor {name}: {depth} blocks, more than vitconv's limit of {max} (the deepest published ViT has 56); the file's header does not describe a real model")]
    TooDeep {
        /// The tensor that gives the depth (a stacked LayerNorm, or the last numbered block's).
        name: String,
        /// The depth it declares.
        depth: usize,
        /// The limit.
        max: usize,
    },

    /// A patch embedding that is not square or is empty.
    #[error("tensor {name}: expected shape [p, p, in, hidden] with a square, non-empty patch, found {found:?} (vitconv converts square patches)")]
    NonSquarePatch {
        /// The patch embedding kernel.
        name: String,
        /// Its shape.
        found: Vec<usize>,
    },

    /// A linear (NaFlex) patch embedding whose rows are not `p * p * 3`: the patch size is read off the rows,
    /// and RGB patches flattened in (py, px, c) order hold three values per pixel.
    #[error("tensor {name}: expected shape [p*p*3, hidden] with hidden > 0 (a linear patch embedding over p x p RGB patches flattened in (py, px, c) order), found {found:?}: the rows must be 3 values for each pixel of a square patch")]
    LinearPatchRows {
        /// The patch embedding kernel.
        name: String,
        /// Its shape.
        found: Vec<usize>,
    },

    /// A NaFlex position grid that is not square, or not of the tower's width.
    #[error("tensor {name}: expected shape [G, G, {hidden}] (a square NaFlex position grid: big_vision builds only square ones and transformers' Siglip2 reads num_patches as a square), found {found:?}")]
    PosGridNotSquare {
        /// The position grid.
        name: String,
        /// The tower's width.
        hidden: usize,
        /// Its shape.
        found: Vec<usize>,
    },

    /// `--image-size` for a NaFlex model, which has no fixed resolution.
    #[error("--image-size: a NaFlex model has no fixed resolution: the preprocessing resizes each image to a patch budget and the model resizes its {}x{} position grid to each image's patch grid; drop --image-size (the patch budget is the loader's runtime choice)", grid.0, grid.1)]
    NaflexImageSize {
        /// The size asked for.
        size: usize,
        /// The stored position grid.
        grid: (usize, usize),
    },

    /// An input normalisation other than the source's for a NaFlex model.
    #[error("--input-norm: {norm} is not folded into a NaFlex linear patch embedding (vitconv folds normalisations into convolution kernels only); use --input-norm unit, the source's own mean = std = 0.5")]
    InputNormNaflex {
        /// The normalisation asked for.
        norm: &'static str,
    },

    /// An attention kernel whose heads do not cover the hidden width.
    #[error("tensor {name}: expected shape [{hidden}, heads, head_dim] with heads x head_dim = {hidden}, found {found:?} (the attention must cover the hidden width)")]
    HeadsMismatch {
        /// The query kernel.
        name: String,
        /// The hidden width.
        hidden: usize,
        /// Its shape.
        found: Vec<usize>,
    },

    /// A position embedding whose grid rows do not form a square.
    #[error(
        "tensor {name}: expected shape [1, {}s^2, {hidden}] for a square s x s grid, found {found:?} ({}, so the grid is {cells} cells, which is not a square)",
        if *class_row { "1 + " } else { "" },
        if *class_row { "the table has a class-token row" } else { "the table has no class-token row" }
    )]
    PosEmbNotSquare {
        /// The position embedding.
        name: String,
        /// The hidden width.
        hidden: usize,
        /// Its shape.
        found: Vec<usize>,
        /// Whether the first row belongs to the class token.
        class_row: bool,
        /// The rows left for the grid.
        cells: usize,
    },

    /// A computed sincos2d position embedding for a width that is not a multiple of 4.
    #[error("tensor {name}: hidden width {hidden} is not divisible by 4, found {found:?} (there is no pos_embedding, so it is sincos2d, which splits the width in four)")]
    SincosWidth {
        /// The patch embedding kernel, which gives the width.
        name: String,
        /// The hidden width.
        hidden: usize,
        /// The kernel's shape.
        found: Vec<usize>,
    },

    /// A hybrid's ResNet root that is not a 7x7 convolution.
    #[error("tensor {name}: expected shape [7, 7, in, width], found {found:?} (the BiT root is a 7x7 convolution)")]
    BitRoot {
        /// The root convolution.
        name: String,
        /// Its shape.
        found: Vec<usize>,
    },

    /// The chosen layout has no exact place for part of the source.
    #[error("--layout {layout} cannot hold {what}: {why}")]
    Refused {
        /// The layout asked for.
        layout: &'static str,
        /// The part of the source it cannot hold, with its sizes.
        what: Part,
        /// Why, and what to pass instead: the layout's fixed sentence.
        why: &'static str,
    },

    /// A sincos2d source (which stores no resolution) converted without `--image-size`.
    #[error("--image-size: the position embedding is sincos2d, computed from the patch grid, and the file does not store the resolution: pass --image-size N, a multiple of the patch ({stride} px), e.g. {}", stride.saturating_mul(14))]
    ImageSizeRequired {
        /// The model's stride in pixels.
        stride: usize,
    },

    /// An `--image-size` the patch grid cannot have.
    #[error(
        "--image-size: {size} px is not a positive multiple of the model's stride {stride} px"
    )]
    ImageSizeNotMultiple {
        /// The size asked for.
        size: usize,
        /// The model's stride in pixels.
        stride: usize,
    },

    /// An `--image-size` over the stated limit, which would ask for an enormous position table.
    #[error("--image-size: {size} px is over the limit of {max} px (the position table grows with its square)")]
    ImageSizeTooLarge {
        /// The size asked for.
        size: usize,
        /// The limit, `layout::MAX_IMAGE_SIZE`.
        max: usize,
    },

    /// An output position table over the limits: a patch grid of too many cells (a small patch at a large
    /// `--image-size`), or too many values for its width.
    #[error("--image-size: {image_size} px at a patch stride of {stride} px is a {}x{} grid of width {width}, {} {what}, over the limit of {limit} {what}; pass a smaller --image-size, at most {max_size} px for this model", grid.0, grid.1, count(*found))]
    PositionTableTooLarge {
        /// The image size, asked for or the source's.
        image_size: usize,
        /// Pixels per patch of the grid.
        stride: usize,
        /// The output's patch grid (rows, columns).
        grid: (usize, usize),
        /// The width of each row of the position table.
        width: usize,
        /// What is over the limit: `grid cells` or `position-table values`.
        what: &'static str,
        /// How many there would be; `None` where the count overflows.
        found: Option<usize>,
        /// The limit, `layout::MAX_GRID_CELLS` or `layout::MAX_TABLE_VALUES`.
        limit: usize,
        /// The largest `--image-size` within both limits for this model.
        max_size: usize,
    },

    /// `--num-classes` that differs from the source's head.
    #[error(
        "--num-classes: the source has {}; a {asked}-class head would be untrained: use --drop-head and attach your own",
        found.map_or("no head".to_string(), |c| format!("a {c}-class head"))
    )]
    NumClassesMismatch {
        /// The classes asked for.
        asked: usize,
        /// The classes of the source's head, if it has one.
        found: Option<usize>,
    },

    /// An input normalisation folded into a hybrid, whose weight-standardised root undoes it.
    #[error("--input-norm: {norm} cannot be folded into a hybrid: the ResNet root is a weight-standardised convolution, which undoes any per-channel scaling; use --input-norm unit")]
    InputNormHybrid {
        /// The normalisation asked for.
        norm: &'static str,
    },

    /// `--proj head` with no head to put there.
    #[error("--proj head: there is no head to put in proj (the source has none or --drop-head was given)")]
    ProjWithoutHead,

    /// A layout without a module in the registry (a bug in vitconv).
    #[error("--layout: {layout} has no module (a bug in vitconv; please report it)")]
    NoLayoutModule {
        /// The layout asked for.
        layout: &'static str,
    },

    /// A folder output asked of a layout that can write this model only as a weights file.
    #[error("OUTPUT: {}: --layout {layout} writes this model as a weights file only: {why}; name a .safetensors or .pt file", path.display())]
    NoFolderForm {
        /// The output asked for.
        path: PathBuf,
        /// The layout.
        layout: &'static str,
        /// Why it has no folder form, and what the exact route is.
        why: &'static str,
    },

    /// `--labels` names another number of classes than the output's head has.
    #[error("--labels: {given} names for a head of {classes} classes; give one name per class, in the head's order")]
    LabelCount {
        /// How many names were given.
        given: usize,
        /// How many classes the head has.
        classes: usize,
    },

    /// `--labels` for an output without a classification head.
    #[error("--labels: {given} names, but the output has no classification head (the source has none, or --drop-head / --num-classes 0 removed it)")]
    LabelsWithoutHead {
        /// How many names were given.
        given: usize,
    },

    /// A config in a folder vitconv wrote that is not JSON.
    #[error("{}: not a JSON config: {source}", path.display())]
    FolderConfig {
        /// The config file.
        path: PathBuf,
        /// The parser's reason.
        source: serde_json::Error,
    },

    /// An output file whose extension names no format.
    #[error("OUTPUT: {}: the format follows the extension: .pt, .pth, .bin or .safetensors (a directory without an extension for --layout hf, and for timm folders)", path.display())]
    OutputExtension {
        /// The output asked for.
        path: PathBuf,
    },

    /// A folder output (hf, a timm folder) that is a file or named like one.
    #[error("OUTPUT: {}: --layout {layout} writes a directory ({files}); name one without a weights extension", path.display())]
    FolderOutputNotDirectory {
        /// The output asked for.
        path: PathBuf,
        /// The layout that writes a folder.
        layout: &'static str,
        /// The files the folder would hold, comma-separated.
        files: String,
    },

    /// A folder output whose path must be written into a config (an open_clip image tower named by path)
    /// but is not UTF-8.
    #[error("{}: the folder's path is not valid UTF-8, and this layout writes it into open_clip_config.json; choose an output path of UTF-8 characters", path.display())]
    OutputPathNotUtf8 {
        /// The folder's absolute path.
        path: PathBuf,
    },
    /// The output exists and `--force` was not given.
    #[error("{}: output exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The output.
        path: PathBuf,
    },

    /// A filesystem error outside the tensor files (hf directory, JSON side files).
    #[error("{}: {op}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`cannot create the directory`).
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A size computation overflowed: the shapes are too large to be real.
    #[error("tensor {name}: size overflows ({what})")]
    Overflow {
        /// The tensor whose size overflowed.
        name: String,
        /// The size being computed.
        what: &'static str,
    },

    /// The worker computing tensors stopped without an error of its own (it panicked): a bug in vitconv.
    #[error("tensor {name}: the conversion worker stopped unexpectedly (a bug in vitconv; please report it)")]
    Worker {
        /// The tensor being computed.
        name: String,
    },

    /// The source returned a different number of values than its shape announced.
    #[error("tensor {name}: read {found} values, its shape {shape:?} holds {expected}")]
    Length {
        /// The tensor read.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The values the shape holds.
        expected: usize,
        /// The values read.
        found: usize,
    },

    /// `vitconv.config` is not the record this build writes: a field is unknown, missing or of the wrong kind.
    #[error("metadata vitconv.config: {source} (the file was written by another vitconv; convert it again with this one)")]
    ConfigRecord {
        /// serde's account, which names the field.
        #[source]
        source: serde_json::Error,
    },

    /// `vitconv.config` is a record of another version.
    #[error("metadata vitconv.config is record {}, this vitconv reads record version {supported}; convert the file again with this vitconv", found.map_or_else(|| "with no version".to_string(), |v| format!("version {v}")))]
    ConfigVersion {
        /// The version the file's record states, if any.
        found: Option<u32>,
        /// The version this build reads.
        supported: u32,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What [`Error::NotASource`] says the file is.
fn not_a_source(tensors: usize, layout: Option<&str>) -> String {
    match layout {
        Some(f) => format!("a {f} checkpoint, which is already a PyTorch layout"),
        None => format!("{tensors} tensors of no known layout"),
    }
}

/// A count that may have overflowed, for a message.
fn count(found: Option<usize>) -> String {
    found.map_or_else(|| "more than can be counted".to_string(), |n| n.to_string())
}

/// The names [`Error::NoBlocks`] looked for, as a clause.
fn no_blocks(looked_for: &[String]) -> String {
    match looked_for {
        [one] => format!("{one} is missing"),
        [first, rest @ ..] => format!("neither {first} nor {} is there", rest.join(" nor ")),
        [] => "no block tensors".to_string(),
    }
}

/// The part of a source a layout has no exact place for, with the sizes that say which ([`Error::Refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// A `pre_logits` dense (followed by tanh) between pooling and the head.
    PreLogits {
        /// Its input width.
        hidden: usize,
        /// Its output width.
        representation: usize,
    },
    /// A BiT ResNet stem in front of the patch embedding.
    HybridStem {
        /// The root convolution's channels.
        width: usize,
    },
    /// A model whose tokens are pooled without a class token, or by a MAP head.
    Pooling(crate::arch::Classifier),
    /// A model without a class token, where the layout always prepends one.
    NoClassToken,
    /// A class token that has a row of the position embedding, where the layout adds none to it.
    ClassTokenPosition,
    /// A MAP head followed by a classifier.
    MapHeadWithClassifier,
    /// A MAP head whose attention or MLP is sized unlike the encoder's.
    MapHeadSizes {
        /// The head's attention heads.
        heads: usize,
        /// The head's MLP width.
        mlp: usize,
        /// The encoder's attention heads.
        encoder_heads: usize,
        /// The encoder's MLP width.
        encoder_mlp: usize,
    },
    /// An MLP width the layout cannot express (from a float ratio, or other than 4x).
    MlpWidth {
        /// The MLP width.
        mlp: usize,
        /// The tower's width.
        hidden: usize,
    },
    /// A tower whose LayerNorms use an epsilon the layout's library cannot be told.
    NormEps {
        /// Which tower (`image`, `text`).
        tower: &'static str,
        /// The epsilon, as the source states it (its exact decimal form).
        eps: String,
    },
    /// A text tower with a causal attention mask, for a library whose text model has none.
    CausalText,
    /// A two-tower image-text model, for a layout with one vision tower.
    TwoTower {
        /// The text tower's width.
        text_width: usize,
    },
    /// A single-tower model, for the two-tower part of a layout.
    SingleTower,
    /// An image-tower head that projects into the shared embedding.
    ImageHead {
        /// The image tower's width.
        hidden: usize,
        /// The embedding width.
        embed: usize,
    },
    /// `--drop-head` on an image tower whose head is the projection into the shared embedding.
    ImageHeadDropped {
        /// The image tower's width.
        hidden: usize,
        /// The embedding width.
        embed: usize,
    },
    /// A text-tower head, for a layout whose text tower ends at pooling.
    TextHead {
        /// The text tower's width.
        width: usize,
        /// The embedding width.
        embed: usize,
    },
    /// A text tower without a head, for a layout whose text tower always projects.
    TextWithoutHead {
        /// The text tower's width.
        width: usize,
    },
    /// A NaFlex tower: a linear patch embedding and a position grid the model resizes per image.
    NaflexTower {
        /// The patch side.
        patch: usize,
        /// The stored position grid.
        grid: (usize, usize),
    },
    /// A text-tower MLP width the layout's float ratio cannot express.
    TextMlpWidth {
        /// The MLP width.
        mlp: usize,
        /// The text tower's width.
        width: usize,
    },
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::arch::Classifier;
        match self {
            Part::PreLogits {
                hidden,
                representation,
            } => write!(f, "pre_logits (dense {hidden} -> {representation} + tanh)"),
            Part::HybridStem { width } => write!(f, "a hybrid ResNet stem (width {width})"),
            Part::Pooling(Classifier::Gap) => f.write_str("a gap (no class token) model"),
            Part::Pooling(Classifier::Map) => {
                f.write_str("a MAP head (attention pooling from a learned probe)")
            }
            Part::Pooling(Classifier::Token) => f.write_str("a class-token model"),
            Part::Pooling(Classifier::None) => f.write_str(
                "an unpooled tower whose head projects every token (PaliGemma's image tower)",
            ),
            Part::NoClassToken => f.write_str("a model without a class token"),
            Part::ClassTokenPosition => f.write_str("a class token with a position embedding"),
            Part::MapHeadWithClassifier => f.write_str("a MAP head followed by a classifier"),
            Part::MapHeadSizes {
                heads,
                mlp,
                encoder_heads,
                encoder_mlp,
            } => write!(
                f,
                "a MAP head with {heads} heads and MLP {mlp} (the encoder has {encoder_heads} and {encoder_mlp})"
            ),
            Part::MlpWidth { mlp, hidden } => write!(f, "an MLP of {mlp} for hidden {hidden}"),
            Part::TwoTower { text_width } => write!(
                f,
                "a two-tower image-text model (text tower of width {text_width})"
            ),
            Part::SingleTower => f.write_str("a single-tower model"),
            Part::NormEps { tower, eps } => {
                write!(f, "an {tower} tower whose LayerNorms use eps {eps}")
            }
            Part::CausalText => f.write_str("a text tower with a causal attention mask"),
            Part::ImageHead { hidden, embed } => {
                write!(f, "an image-tower head {hidden} -> {embed} after the pooling")
            }
            Part::ImageHeadDropped { hidden, embed } => write!(
                f,
                "--drop-head on an image tower whose head {hidden} -> {embed} projects into the shared embedding"
            ),
            Part::TextHead { width, embed } => write!(f, "a text head {width} -> {embed}"),
            Part::TextWithoutHead { width } => {
                write!(f, "a text tower without a head (width {width})")
            }
            Part::NaflexTower { patch, grid } => write!(
                f,
                "a NaFlex tower (a linear embedding of {patch}x{patch} patches and a learned {}x{} position grid resized to each image's patch grid)",
                grid.0, grid.1
            ),
            Part::TextMlpWidth { mlp, width } => {
                write!(f, "a text MLP of {mlp} for width {width}")
            }
        }
    }
}
