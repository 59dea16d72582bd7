-- Order items move into their order: `orders.items` holds them as the JSON array they are
-- served as, so an order or a page of orders is read in one query. Existing items are copied
-- over, then `order_items` is dropped.
ALTER TABLE "orders" ADD COLUMN "items" text NOT NULL DEFAULT '[]';
-- Each order that has items gets them in position order, written as serde_json wrote the
-- migration's `Item` list: compact, keys in field order, `product_id` (a 16-byte blob) as a
-- lowercase hyphenated UUID, strings escaped by json_quote as serde_json escapes them.
-- The list is built by a window aggregate, whose ORDER BY fixes the order of the items.
-- Orders without items keep '[]'.
WITH "item" ("order_id", "position", "json") AS (
    SELECT "order_id", "position",
        '{"product_id":"' || lower(
            substr(hex("product_id"), 1, 8) || '-' || substr(hex("product_id"), 9, 4) || '-'
            || substr(hex("product_id"), 13, 4) || '-' || substr(hex("product_id"), 17, 4) || '-'
            || substr(hex("product_id"), 21, 12))
        || '","sku":' || json_quote("sku")
        || ',"name":' || json_quote("name")
        || ',"unit_price":' || "unit_price"
        || ',"quantity":' || "quantity"
        || ',"line_total":' || "line_total"
        || '}'
    FROM "order_items"
),
"copied" ("order_id", "first", "items") AS (
    SELECT "order_id",
        row_number() OVER (PARTITION BY "order_id" ORDER BY "position"),
        '[' || group_concat("json", ',') OVER (
            PARTITION BY "order_id" ORDER BY "position"
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) || ']'
    FROM "item"
)
UPDATE "orders" SET "items" = "copied"."items"
FROM "copied"
WHERE "copied"."order_id" = "orders"."id" AND "copied"."first" = 1;
DROP TABLE "order_items";
