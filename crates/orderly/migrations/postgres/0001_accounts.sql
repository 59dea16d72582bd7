-- Users, refresh-token families and API keys.
CREATE TABLE "users" ( "id" uuid NOT NULL PRIMARY KEY, "email" varchar(254) NOT NULL UNIQUE, "name" varchar(400) NOT NULL, "role" varchar(16) NOT NULL, "password_hash" varchar NOT NULL, "version" bigint NOT NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL );
CREATE INDEX "users_created_at_id" ON "users" ("created_at", "id");
CREATE TABLE "refresh_tokens" ( "id" uuid NOT NULL PRIMARY KEY, "family_id" uuid NOT NULL, "user_id" uuid NOT NULL, "token_hash" varchar(64) NOT NULL UNIQUE, "expires_at" timestamp with time zone NOT NULL, "used_at" timestamp with time zone NULL, "revoked_at" timestamp with time zone NULL, "created_at" timestamp with time zone NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE );
CREATE INDEX "refresh_tokens_family_id" ON "refresh_tokens" ("family_id");
CREATE TABLE "api_keys" ( "id" uuid NOT NULL PRIMARY KEY, "user_id" uuid NOT NULL, "name" varchar(400) NOT NULL, "prefix" varchar(16) NOT NULL, "secret_hash" varchar(64) NOT NULL UNIQUE, "created_at" timestamp with time zone NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE );
CREATE INDEX "api_keys_user_id_created_at_id" ON "api_keys" ("user_id", "created_at", "id");
