//! GGUF metadata: typed key–value pairs and their getters.

use std::collections::HashMap;

use super::error::GgufError;

/// The type of a metadata value, with its id in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum ValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// A boolean stored as one byte, 0 or 1.
    Bool = 7,
    /// A UTF-8 string: `u64` byte length, then the bytes.
    String = 8,
    /// An array: element type (`u32`), `u64` count, then the elements.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl ValueType {
    /// The type with this GGUF id, or `None` for an id outside `0..=12`.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The type's id in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// A lower-case name for messages (`"u32"`, `"string"`, `"array"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes in a file (an empty
    /// string is its 8-byte length; an empty array its type and count).
    pub(crate) fn min_encoded_len(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MetadataValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values of one type.
    Array(MetadataArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl MetadataValue {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The type for messages: `"u32"`, `"array of string"`, …
    pub fn type_name(&self) -> String {
        match self {
            Self::Array(a) => a.type_name(),
            other => other.value_type().name().to_owned(),
        }
    }
}

/// An array value: elements of one type, stored unboxed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MetadataArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// Boolean elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays (each may have its own element type).
    Array(Vec<MetadataArray>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl MetadataArray {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type for messages: `"array of string"`, `"array of array"`.
    pub fn type_name(&self) -> String {
        format!("array of {}", self.element_type().name())
    }
}

/// The metadata of a GGUF file: key–value pairs in file order.
///
/// The getters return the value when the key exists with exactly the
/// requested type, and otherwise [`GgufError::MissingKey`] or
/// [`GgufError::WrongType`] naming the key, the type asked for and the type
/// stored. No integer type is silently converted into another.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::GgufFile;
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_fixture.gguf");
/// let file = GgufFile::open(path)?;
/// let meta = file.metadata();
/// assert_eq!(meta.get_str("general.architecture")?, "lastmile-test");
/// assert_eq!(meta.get_u32("test.u32")?, 4_000_000_000);
/// assert_eq!(meta.get_str_array("test.strings")?[0], "alpha");
/// assert!(meta.get_u64("test.u32").is_err()); // stored as u32: no silent widening
/// # Ok::<(), lastmile_core::gguf::GgufError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

macro_rules! scalar_getter {
    ($(#[$doc:meta] $name:ident => $variant:ident, $ty:ty;)*) => {$(
        #[$doc]
        ///
        /// # Errors
        /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
        pub fn $name(&self, key: &str) -> Result<$ty, GgufError> {
            match self.value(key)? {
                MetadataValue::$variant(v) => Ok(*v),
                other => Err(wrong_type(key, ValueType::$variant.name(), other)),
            }
        }
    )*};
}

macro_rules! array_getter {
    ($(#[$doc:meta] $name:ident => $variant:ident, $ty:ty;)*) => {$(
        #[$doc]
        ///
        /// # Errors
        /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
        pub fn $name(&self, key: &str) -> Result<&[$ty], GgufError> {
            match self.get_array(key)? {
                MetadataArray::$variant(v) => Ok(v),
                other => Err(GgufError::WrongType {
                    key: key.to_owned(),
                    expected: format!("array of {}", ValueType::$variant.name()),
                    found: other.type_name(),
                }),
            }
        }
    )*};
}

fn wrong_type(key: &str, expected: &str, found: &MetadataValue) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected: expected.to_owned(),
        found: found.type_name(),
    }
}

impl Metadata {
    /// Adds a pair; `false` (and no change) if the key is already present.
    pub(crate) fn insert(&mut self, key: String, value: MetadataValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The value of `key`, of any type.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`].
    pub fn value(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    scalar_getter! {
        /// The `u8` value of `key`.
        get_u8 => U8, u8;
        /// The `i8` value of `key`.
        get_i8 => I8, i8;
        /// The `u16` value of `key`.
        get_u16 => U16, u16;
        /// The `i16` value of `key`.
        get_i16 => I16, i16;
        /// The `u32` value of `key`.
        get_u32 => U32, u32;
        /// The `i32` value of `key`.
        get_i32 => I32, i32;
        /// The `u64` value of `key`.
        get_u64 => U64, u64;
        /// The `i64` value of `key`.
        get_i64 => I64, i64;
        /// The `f32` value of `key`.
        get_f32 => F32, f32;
        /// The `f64` value of `key`.
        get_f64 => F64, f64;
        /// The boolean value of `key`.
        get_bool => Bool, bool;
    }

    /// The string value of `key`.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.value(key)? {
            MetadataValue::String(s) => Ok(s),
            other => Err(wrong_type(key, "string", other)),
        }
    }

    /// The array value of `key`, of any element type.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray, GgufError> {
        match self.value(key)? {
            MetadataValue::Array(a) => Ok(a),
            other => Err(wrong_type(key, "array", other)),
        }
    }

    array_getter! {
        /// The `u8` array value of `key`.
        get_u8_array => U8, u8;
        /// The `i8` array value of `key`.
        get_i8_array => I8, i8;
        /// The `u16` array value of `key`.
        get_u16_array => U16, u16;
        /// The `i16` array value of `key`.
        get_i16_array => I16, i16;
        /// The `u32` array value of `key`.
        get_u32_array => U32, u32;
        /// The `i32` array value of `key` (e.g. `tokenizer.ggml.token_type`).
        get_i32_array => I32, i32;
        /// The `u64` array value of `key`.
        get_u64_array => U64, u64;
        /// The `i64` array value of `key`.
        get_i64_array => I64, i64;
        /// The `f32` array value of `key` (e.g. `tokenizer.ggml.scores`).
        get_f32_array => F32, f32;
        /// The `f64` array value of `key`.
        get_f64_array => F64, f64;
        /// The boolean array value of `key`.
        get_bool_array => Bool, bool;
        /// The string array value of `key` (e.g. `tokenizer.ggml.tokens`).
        get_str_array => String, String;
        /// The nested-array value of `key` (an array whose elements are arrays).
        get_nested_array => Array, MetadataArray;
    }
}
