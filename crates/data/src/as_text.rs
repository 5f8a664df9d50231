//! Choices written and read as their command-line text (`--slice middle`, `--window 40,80`,
//! `--reorient canonical`): the same text in a model card, a cache key and on the command line.
//! Each such type gives `FromStr` (its error a `String`) and `Display`; [`serde_as_text`] derives
//! from them the conversions `#[serde(try_from = "String", into = "String")]` asks for.

/// `TryFrom<String>` (by `FromStr`) and `From<T> for String` (by `Display`) for each type named.
macro_rules! serde_as_text {
    ($($kind:ty),+ $(,)?) => {$(
        impl TryFrom<String> for $kind {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }

        impl From<$kind> for String {
            fn from(value: $kind) -> String {
                value.to_string()
            }
        }
    )+};
}

pub(crate) use serde_as_text;
