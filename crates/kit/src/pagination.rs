//! The list envelope and its `Link` header.
//!
//! Every list is keyset-paginated: a page is `limit` rows after the cursor's position in a
//! total order (ties broken by id). Handlers fetch `limit + 1` rows; the extra row only tells
//! whether another page exists.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Uri, header};
use serde::Serialize;

use crate::conditional::CacheControl;

/// The page size when a request names none.
pub const DEFAULT_LIMIT: i64 = 20;

/// A page of rows fetched with `limit + 1`.
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Splits the over-fetched row off: `rows` had up to `limit + 1` elements.
    pub fn from_overfetch(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self { rows, has_more }
    }
}

/// `{"data": [...], "next_cursor": ..., "has_more": ...}`: the one envelope of every list.
#[derive(utoipa::ToSchema)]
pub struct ListBody<T> {
    /// The page's items, in the list's order.
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Whether another page follows.
    pub has_more: bool,
}

/// Responds with a list envelope, a `Link: rel="next"` header built from the request URI, and
/// the given cache policy.
pub fn list_response<T: Serialize>(uri: &Uri, body: ListBody<T>, cache: CacheControl) -> Response {
    let ListBody { data, next_cursor, has_more } = body;
    let write_data = |out: &mut Vec<u8>| serde_json::to_writer(out, &data).expect("list bodies serialize");
    written_list_response(uri, data.len(), write_data, next_cursor.as_deref(), has_more, cache)
}

/// As [`list_response`], with the `data` array (`items` long) written by `write_data`: the same
/// envelope for lists whose items write their own JSON (see [`crate::json`]).
pub fn written_list_response(
    uri: &Uri,
    items: usize,
    write_data: impl FnOnce(&mut Vec<u8>),
    next_cursor: Option<&str>,
    has_more: bool,
    cache: CacheControl,
) -> Response {
    // Sized for the usual item up front: growing a page's buffer step by step copies it again
    // at each step.
    let mut buffer = Vec::with_capacity(256 + 1024 * items);
    buffer.extend_from_slice(b"{\"data\":");
    write_data(&mut buffer);
    buffer.extend_from_slice(b",\"next_cursor\":");
    serde_json::to_writer(&mut buffer, &next_cursor).expect("a cursor serializes");
    buffer.extend_from_slice(if has_more { b",\"has_more\":true}" } else { b",\"has_more\":false}" });
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], buffer).into_response();
    if let Some(link) = next_cursor.map(|cursor| next_link(uri, cursor)).and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    cache.apply(response.headers_mut());
    response
}

/// The request URI with `cursor` replaced by the next one.
fn next_link(uri: &Uri, cursor: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if name != "cursor" {
            query.append_pair(&name, &value);
        }
    }
    query.append_pair("cursor", cursor);
    format!("<{}?{}>; rel=\"next\"", uri.path(), query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_replaces_the_cursor_and_keeps_other_parameters() {
        let uri: Uri = "/api/v1/products?limit=2&cursor=old&q=a%20b".parse().unwrap();
        assert_eq!(next_link(&uri, "new.tag"), "</api/v1/products?limit=2&q=a+b&cursor=new.tag>; rel=\"next\"");
    }

    #[test]
    fn the_envelope_is_data_then_cursor_then_has_more() {
        let uri: Uri = "/api/v1/things?limit=1".parse().unwrap();
        let body = |response: Response| async move {
            let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let more = list_response(
            &uri,
            ListBody { data: vec![1, 2], next_cursor: Some("c\"1".into()), has_more: true },
            CacheControl::Private,
        );
        assert_eq!(more.headers()[header::LINK], "</api/v1/things?limit=1&cursor=c%221>; rel=\"next\"");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(runtime.block_on(body(more)), r#"{"data":[1,2],"next_cursor":"c\"1","has_more":true}"#);
        let last = list_response(
            &uri,
            ListBody::<u8> { data: vec![], next_cursor: None, has_more: false },
            CacheControl::Private,
        );
        assert!(last.headers().get(header::LINK).is_none());
        assert_eq!(runtime.block_on(body(last)), r#"{"data":[],"next_cursor":null,"has_more":false}"#);
    }

    #[test]
    fn overfetch_reveals_whether_more_rows_exist() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2);
        assert_eq!((page.rows, page.has_more), (vec![1, 2], true));
        let page = Page::from_overfetch(vec![1, 2], 2);
        assert_eq!((page.rows, page.has_more), (vec![1, 2], false));
    }
}
