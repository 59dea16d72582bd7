-- Order items move into their order: `orders.items` holds them as the JSON array they are
-- served as, so an order or a page of orders is read in one query. Existing items are copied
-- over, then `order_items` is dropped.
ALTER TABLE "orders" ADD COLUMN "items" text NOT NULL DEFAULT '[]';
-- Each order that has items gets them in position order, written as serde_json wrote the
-- migration's `Item` list: compact, keys in field order, `product_id` as a hyphenated UUID.
-- Orders without items keep '[]'.
UPDATE "orders" SET "items" = "copied"."items"
FROM (
    SELECT "order_id",
        '[' || string_agg(
            '{"product_id":' || to_json("product_id"::text)::text
            || ',"sku":' || to_json("sku")::text
            || ',"name":' || to_json("name")::text
            || ',"unit_price":' || "unit_price"::text
            || ',"quantity":' || "quantity"::text
            || ',"line_total":' || "line_total"::text
            || '}',
            ',' ORDER BY "position") || ']' AS "items"
    FROM "order_items"
    GROUP BY "order_id"
) AS "copied"
WHERE "orders"."id" = "copied"."order_id";
DROP TABLE "order_items";
