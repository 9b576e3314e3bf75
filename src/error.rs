// SPDX-License-Identifier: MPL-2.0

//! Why a setting cannot be used, in the GStreamer error domain an application checks:
//! a missing or unreadable file is a resource error, a wrong value a settings error.

use std::fmt;
use std::io;

use serde_json::Value;

/// A setting that cannot be used. The message names the setting and the value (never a
/// secret); the variant picks the GStreamer error domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingError {
    /// The value is wrong or does not fit the others: `gst::LibraryError::Settings`.
    Invalid(String),
    /// A file the setting names does not exist: `gst::ResourceError::NotFound`.
    NotFound(String),
    /// A file the setting names cannot be read: `gst::ResourceError::OpenRead`.
    Unreadable(String),
}

impl SettingError {
    /// The error for a failed read of a file: not found, or unreadable for another reason.
    pub fn io(message: String, err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => SettingError::NotFound(message),
            _ => SettingError::Unreadable(message),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            SettingError::Invalid(m) | SettingError::NotFound(m) | SettingError::Unreadable(m) => m,
        }
    }

    /// The same error with `prefix: ` before its message, e.g. the setting's name.
    pub fn context(self, prefix: impl fmt::Display) -> Self {
        let with = |m: String| format!("{prefix}: {m}");
        match self {
            SettingError::Invalid(m) => SettingError::Invalid(with(m)),
            SettingError::NotFound(m) => SettingError::NotFound(with(m)),
            SettingError::Unreadable(m) => SettingError::Unreadable(with(m)),
        }
    }

    /// Several errors as one, their messages joined by `; `, in the domain of the first.
    pub fn join<'a>(errors: impl IntoIterator<Item = &'a SettingError>) -> Option<Self> {
        let mut errors = errors.into_iter();
        let first = errors.next()?;
        let message = errors.fold(first.message().to_owned(), |all, e| {
            format!("{all}; {}", e.message())
        });
        Some(match first {
            SettingError::Invalid(_) => SettingError::Invalid(message),
            SettingError::NotFound(_) => SettingError::NotFound(message),
            SettingError::Unreadable(_) => SettingError::Unreadable(message),
        })
    }

    /// The error message an element's `start()` returns; its debug text points at the
    /// caller.
    #[track_caller]
    pub fn to_error_message(&self) -> gst::ErrorMessage {
        #[track_caller]
        fn located<T: gst::MessageErrorDomain>(error: T, message: &str) -> gst::ErrorMessage {
            let at = std::panic::Location::caller();
            gst::ErrorMessage::new(&error, Some(message), None, at.file(), "start", at.line())
        }
        match self {
            SettingError::Invalid(m) => located(gst::LibraryError::Settings, m),
            SettingError::NotFound(m) => located(gst::ResourceError::NotFound, m),
            SettingError::Unreadable(m) => located(gst::ResourceError::OpenRead, m),
        }
    }
}

/// A value as an error message shows it: a string, number, boolean or null as written, an
/// object or an array only by its kind. A container can hold a secret at any depth, e.g.
/// `"tls": {"client_key": {"path": "..", "password": ".."}}`, and a password must never
/// reach an error message (found by the `config_file` fuzz target).
pub fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        scalar => scalar.to_string(),
    }
}

impl From<String> for SettingError {
    fn from(message: String) -> Self {
        SettingError::Invalid(message)
    }
}

impl From<&str> for SettingError {
    fn from(message: &str) -> Self {
        SettingError::Invalid(message.to_owned())
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for SettingError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_not_found_and_other_read_failures_unreadable() {
        let missing = std::fs::read("/nonexistent/analyticsmqtt.json").unwrap_err();
        let err = SettingError::io("config: cannot read".into(), &missing);
        assert_eq!(err, SettingError::NotFound("config: cannot read".into()));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = SettingError::io("config: cannot read".into(), &denied);
        assert_eq!(err, SettingError::Unreadable("config: cannot read".into()));
    }

    #[test]
    fn joined_errors_keep_the_first_domain() {
        let errors = [
            SettingError::NotFound("config: cannot read /x".into()),
            SettingError::Invalid("threshold: 2".into()),
        ];
        assert_eq!(
            SettingError::join(&errors),
            Some(SettingError::NotFound(
                "config: cannot read /x; threshold: 2".into()
            ))
        );
        assert_eq!(SettingError::join(&[]), None);
    }

    #[test]
    fn context_keeps_the_domain() {
        let err = SettingError::NotFound("cannot read /x".into()).context("config");
        assert_eq!(err, SettingError::NotFound("config: cannot read /x".into()));
    }
}
