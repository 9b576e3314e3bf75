// SPDX-License-Identifier: MPL-2.0

//! The JSON `gvametaconvert` attached to a buffer, published as it is: what
//! `gvametapublish` sends, plus `frame_id` as DLSPS adds it, and the element's `source`,
//! `tags` and `sink_time` only where the JSON lacks them.

use std::io::Write as _;

use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::meta::{self, FrameContext};

/// gvametaconvert's JSON of one buffer.
#[derive(Debug)]
pub struct Attached {
    /// Every JSON meta of the buffer merged in order, later keys replacing earlier ones
    /// (as DLSPS merges them).
    frame: Map<String, Value>,
    /// The one message as attached, while nothing forces rewriting it.
    verbatim: Option<String>,
}

impl Attached {
    /// Parses the messages of a buffer's JSON metas; `None` without any. The error names
    /// what is wrong with the first message that is not a JSON object.
    pub fn parse(messages: Vec<String>) -> Result<Option<Attached>, String> {
        let single = messages.len() == 1;
        let mut frame = Map::new();
        let mut last = None;
        for message in messages {
            match serde_json::from_str::<Value>(&message) {
                Ok(Value::Object(fields)) => frame.extend(fields),
                Ok(other) => return Err(format!("not a JSON object: {}", meta::json_kind(&other))),
                Err(e) => return Err(format!("invalid JSON ({e})")),
            }
            last = Some(message);
        }
        Ok(last.map(|message| Attached {
            verbatim: (single && !frame.contains_key("frame_id")).then_some(message),
            frame,
        }))
    }

    /// How many objects the JSON lists.
    pub fn object_count(&self) -> usize {
        self.frame
            .get("objects")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    /// Applies the configuration's filter to the JSON's objects.
    pub fn filter(&mut self, filter: &Filter) {
        if filter.apply_to_json(&mut self.frame) > 0 {
            self.verbatim = None;
        }
    }

    /// The metadata of the `array` and `object` formats.
    pub fn write(&self, out: &mut Vec<u8>, ctx: &FrameContext) {
        let additions = self.additions(ctx, true);
        match &self.verbatim {
            // The attached text stays byte for byte; the additions go in front.
            Some(text) => {
                let body = text
                    .trim()
                    .strip_prefix('{')
                    .unwrap_or_default()
                    .trim_start();
                out.push(b'{');
                for (i, (key, value)) in additions.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, key).expect("writes to a Vec");
                    out.push(b':');
                    serde_json::to_writer(&mut *out, value).expect("writes to a Vec");
                }
                if !additions.is_empty() && !body.starts_with('}') {
                    out.push(b',');
                }
                out.extend_from_slice(body.as_bytes());
            }
            None => {
                let mut frame = self.frame.clone();
                frame.extend(additions);
                serde_json::to_writer(&mut *out, &frame).expect("writes to a Vec");
            }
        }
    }

    /// The keys merged into DLSPS's metadata, as one JSON object: `frame_id` and (when the
    /// element has them) `tags` are left to the DLSPS writer, which puts them where DLSPS
    /// does.
    pub fn dlsps_fields(&self, ctx: &FrameContext) -> String {
        let mut frame = self.frame.clone();
        frame.remove("frame_id");
        if ctx.tags.is_some() {
            frame.remove("tags");
        }
        frame.extend(self.additions(ctx, false));
        let mut out = Vec::new();
        write!(out, "{}", Value::Object(frame)).expect("writes to a Vec");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// `frame_id` (with `with_frame_id`), and `source`, `tags` and `sink_time` where the
    /// JSON lacks them.
    fn additions(&self, ctx: &FrameContext, with_frame_id: bool) -> Map<String, Value> {
        let mut additions = Map::new();
        if let Some(frame_id) = ctx.frame_id.filter(|_| with_frame_id) {
            additions.insert("frame_id".into(), frame_id.into());
        }
        let absent = |key: &str| !self.frame.contains_key(key);
        if let Some(sink_time) = ctx.sink_time.filter(|_| absent("sink_time")) {
            additions.insert("sink_time".into(), sink_time.into());
        }
        if let Some(source) = ctx.source.filter(|_| absent("source")) {
            additions.insert("source".into(), source.into());
        }
        if let Some(tags) = ctx.tags.filter(|_| absent("tags")) {
            // Validated as a JSON object when it was set.
            additions.insert(
                "tags".into(),
                serde_json::from_str(tags).unwrap_or(Value::Null),
            );
        }
        additions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"objects":[{"detection":{"confidence":0.5,"label":"box"},"tensors":[{"data":[1,2]}]}],"resolution":{"height":2,"width":4},"timestamp":1764000000123456789}"#;

    fn write(attached: &Attached, ctx: &FrameContext) -> String {
        let mut out = Vec::new();
        attached.write(&mut out, ctx);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_message_stays_byte_for_byte_with_frame_id_in_front() {
        let attached = Attached::parse(vec![LINE.into()]).unwrap().unwrap();
        let ctx = FrameContext {
            frame_id: Some(3),
            ..Default::default()
        };
        let text = write(&attached, &ctx);
        assert_eq!(text, format!("{{\"frame_id\":3,{}", &LINE[1..]));
        assert_eq!(
            write(&Attached::parse(vec!["{}".into()]).unwrap().unwrap(), &ctx),
            r#"{"frame_id":3}"#
        );
    }

    #[test]
    fn the_element_adds_only_what_the_json_lacks() {
        let attached = Attached::parse(vec![r#"{"source":"gvametaconvert","objects":[]}"#.into()])
            .unwrap()
            .unwrap();
        let ctx = FrameContext {
            frame_id: Some(0),
            source: Some("element"),
            tags: Some(r#"{"site":"a"}"#),
            sink_time: Some(9),
            ..Default::default()
        };
        let value: Value = serde_json::from_str(&write(&attached, &ctx)).unwrap();
        assert_eq!(value["source"], "gvametaconvert");
        assert_eq!(value["tags"]["site"], "a");
        assert_eq!(value["sink_time"], 9);
        assert_eq!(value["frame_id"], 0);
    }

    #[test]
    fn several_messages_merge_in_order_and_filtering_rewrites() {
        let mut attached =
            Attached::parse(vec![LINE.into(), r#"{"timestamp":5,"extra":true}"#.into()])
                .unwrap()
                .unwrap();
        assert!(attached.verbatim.is_none());
        let mut filter = Filter::default();
        filter.label_score.insert("box".into(), 0.9);
        attached.filter(&filter);
        assert_eq!(attached.object_count(), 0);
        let value: Value =
            serde_json::from_str(&write(&attached, &FrameContext::default())).unwrap();
        assert_eq!(value["timestamp"], 5);
        assert_eq!(value["extra"], true);
    }

    #[test]
    fn what_is_not_a_json_object_is_named() {
        assert_eq!(
            Attached::parse(vec!["[1]".into()]).unwrap_err(),
            "not a JSON object: an array"
        );
        assert!(Attached::parse(vec!["{".into()])
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(Attached::parse(vec![]).unwrap().is_none());
    }
}
