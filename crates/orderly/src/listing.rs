//! Keyset-paginated lists on top of the kit's cursors: the shared query parameters (`limit`,
//! `cursor`, `sort`, `fields`), the `WHERE (key, id) > (…)` seek condition and the response.
//!
//! Every sort is made total by the id as a tie-breaker and is backed by an index on
//! `(key, id)`, so a page costs one index range scan however deep it is.

use crate::db::Param;
use axum::response::Response;
use http::Uri;
use orderly_kit::Problem;
use orderly_kit::conditional::CacheControl;
use orderly_kit::cursor::CursorCodec;
use orderly_kit::fields::FieldSelection;
use orderly_kit::pagination::{DEFAULT_LIMIT, ListBody, Page, list_response, written_list_response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// A sort order: a key, descending or not. Each list declares its orders as an enum that
/// converts to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sort {
    pub key: &'static str,
    pub descending: bool,
}

/// The sort orders of lists ordered by creation time.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum CreatedAtSort {
    /// Newest first (the default).
    #[default]
    #[serde(rename = "-created_at")]
    NewestFirst,
    #[serde(rename = "created_at")]
    OldestFirst,
}

impl From<CreatedAtSort> for Sort {
    fn from(sort: CreatedAtSort) -> Self {
        Sort { key: "created_at", descending: matches!(sort, CreatedAtSort::NewestFirst) }
    }
}

/// The paging parameters every list takes; each list declares its `sort` and filters beside.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1–100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// Opaque cursor from `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Comma-separated top-level fields to return.
    #[param(value_type = Option<Vec<String>>)]
    fields: Option<FieldSelection>,
}

/// The sort parameter of a list ordered by creation time that has no filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreatedAtSortQuery {
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    pub sort: Option<CreatedAtSort>,
}

/// The `fields` parameter of a single-resource GET.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FieldsQuery {
    /// Comma-separated top-level fields to return, e.g. `id,name`.
    #[param(value_type = Option<Vec<String>>)]
    pub fields: Option<FieldSelection>,
}

/// The parameters of one page of a list.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub limit: i64,
    pub cursor: Option<String>,
    pub sort: Sort,
    pub fields: Option<FieldSelection>,
}

impl ListParams {
    pub fn new(page: PageQuery, sort: impl Into<Sort>) -> Self {
        Self { limit: page.limit.unwrap_or(DEFAULT_LIMIT), cursor: page.cursor, sort: sort.into(), fields: page.fields }
    }

    /// Decodes the cursor, if any, for a list whose filters and sort are `scope`.
    pub fn position<P: DeserializeOwned>(
        &self,
        codec: &CursorCodec,
        scope: &impl Serialize,
    ) -> Result<Option<P>, Problem> {
        self.cursor.as_deref().map(|cursor| codec.decode(cursor, scope)).transpose()
    }
}

/// Adds ` AND <condition>` to a list query, each `$` in `condition` standing for `value`
/// (numbered after the parameters already in `values`).
pub fn and_where<'a>(sql: &mut String, values: &mut Vec<&'a dyn Param>, condition: &str, value: &'a dyn Param) {
    values.push(value);
    sql.push_str(" AND ");
    sql.push_str(&condition.replace('$', &format!("${}", values.len())));
}

/// Ends a list query (`SELECT … WHERE <filters>`) with its keyset page: the seek condition
/// `(key, id) > (…)` (or `<` when descending) after the row `after` names, the order by
/// `key, id`, and a limit one past `limit` (to learn whether more rows follow, see [`Page`]).
/// Parameters are numbered after those already in `params`.
///
/// [`Page`]: orderly_kit::pagination::Page
pub fn seek<'a>(
    sql: &mut String,
    params: &mut Vec<&'a dyn Param>,
    key: &str,
    descending: bool,
    after: Option<(&'a dyn Param, &'a uuid::Uuid)>,
    limit_plus_one: &'a i64,
) {
    use std::fmt::Write;
    let direction = if descending { "DESC" } else { "ASC" };
    if let Some((key_value, id)) = after {
        params.push(key_value);
        params.push(id);
        let comparison = if descending { '<' } else { '>' };
        let (k, i) = (params.len() - 1, params.len());
        write!(sql, " AND ({key}, id) {comparison} (${k}, ${i})").expect("writing to a string");
    }
    params.push(limit_plus_one);
    write!(sql, " ORDER BY {key} {direction}, id {direction} LIMIT ${}", params.len()).expect("writing to a string");
}

/// Responds with a page: each row as `render` makes it (only the fields `fields=` selects, if
/// any), the next cursor from the last row when more follow, and the list envelope.
pub fn respond<'a, T, B: Serialize>(
    uri: &Uri,
    page: &'a Page<T>,
    params: &ListParams,
    render: impl Fn(&'a T) -> B,
    next_cursor: impl FnOnce(&T) -> String,
    cache: CacheControl,
) -> Response {
    let write = |out: &mut Vec<u8>, row: &'a T| {
        serde_json::to_writer(out, &render(row)).expect("representations serialize");
    };
    respond_writing(uri, page, params, &render, write, next_cursor, cache)
}

/// As [`respond`], with each row written by `write` (the bytes `render` serializes to, written
/// directly with [`orderly_kit::json`]) unless `fields=` selects some: for the lists read most.
pub fn respond_writing<'a, T, B: Serialize>(
    uri: &Uri,
    page: &'a Page<T>,
    params: &ListParams,
    render: impl Fn(&'a T) -> B,
    write: impl Fn(&mut Vec<u8>, &'a T),
    next_cursor: impl FnOnce(&T) -> String,
    cache: CacheControl,
) -> Response {
    let next_cursor = match (page.has_more, page.rows.last()) {
        (true, Some(last)) => Some(next_cursor(last)),
        _ => None,
    };
    let (items, has_more) = (page.rows.len(), page.has_more);
    match &params.fields {
        None => {
            let write_all = |out: &mut Vec<u8>| {
                out.push(b'[');
                for (index, row) in page.rows.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write(out, row);
                }
                out.push(b']');
            };
            written_list_response(uri, items, write_all, next_cursor.as_deref(), has_more, cache)
        }
        Some(fields) => {
            let data = page
                .rows
                .iter()
                .map(|row| fields.apply(serde_json::to_value(render(row)).expect("representations serialize")))
                .collect::<Vec<Value>>();
            list_response(uri, ListBody { data, next_cursor, has_more }, cache)
        }
    }
}
