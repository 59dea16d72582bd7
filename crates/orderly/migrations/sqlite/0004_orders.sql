-- Orders and their line items. Items snapshot the product's SKU, name and price at order time.
CREATE TABLE "orders" ( "id" uuid_text NOT NULL PRIMARY KEY, "user_id" uuid_text NOT NULL, "status" varchar(16) NOT NULL, "currency" varchar(3) NOT NULL, "total" bigint NOT NULL, "version" bigint NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, "updated_at" timestamp_with_timezone_text NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") );
-- A customer's list seeks on the first index, an admin's on the second.
CREATE INDEX "orders_user_id_created_at_id" ON "orders" ("user_id", "created_at", "id");
CREATE INDEX "orders_created_at_id" ON "orders" ("created_at", "id");
CREATE TABLE "order_items" ( "order_id" uuid_text NOT NULL, "position" integer NOT NULL, "product_id" uuid_text NOT NULL, "sku" varchar(64) NOT NULL, "name" varchar(800) NOT NULL, "unit_price" bigint NOT NULL, "quantity" bigint NOT NULL, "line_total" bigint NOT NULL, PRIMARY KEY ("order_id", "position"), FOREIGN KEY ("order_id") REFERENCES "orders" ("id") ON DELETE CASCADE );
