-- Products. The two sort orders of the public list each have an index whose trailing `id`
-- makes the order total, so every page is one index range scan.
CREATE TABLE "products" ( "id" uuid NOT NULL PRIMARY KEY, "sku" varchar(64) NOT NULL UNIQUE, "name" varchar(800) NOT NULL, "description" text NOT NULL, "unit_price" bigint NOT NULL, "currency" varchar(3) NOT NULL, "stock" bigint NOT NULL CHECK ("stock" >= 0), "active" bool NOT NULL, "version" bigint NOT NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL );
CREATE INDEX "products_created_at_id" ON "products" ("created_at", "id");
CREATE INDEX "products_unit_price_id" ON "products" ("unit_price", "id");
