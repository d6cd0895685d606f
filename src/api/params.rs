//! Query-string access that turns every mistake into a 422 naming the parameter.

use crate::api::error::ApiError;

/// Decoded query parameters; unknown ones are ignored, repeated known ones rejected.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes a raw query string (`None` when the URL had none).
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `name`, if given once; 422 if given more than once.
    pub fn get(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::invalid(name, "the parameter once"));
        }
        Ok(first)
    }

    /// An integer in `min..=max`, `default` when absent.
    pub fn int(
        &self,
        name: &'static str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, ApiError> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ApiError::invalid(name, format!("an integer from {min} to {max}"))),
        }
    }

    /// `true`/`false`, `None` when absent.
    pub fn bool(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid(name, "true or false")),
        }
    }
}
