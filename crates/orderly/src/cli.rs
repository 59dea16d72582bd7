//! The `orderly` command: `serve`, `migrate`, `admin create-user` and `seed --demo`.

use std::io::BufRead;

use clap::CommandFactory;
use clap::error::{ContextKind, ErrorKind};

use crate::accounts::domain::{Email, Password, Role, UserName};
use crate::accounts::{passwords, store as accounts_store};
use crate::app::{Application, Process, StartError, shutdown_signal};
use crate::catalog::store as catalog_store;
use crate::config::{AdminCommand, Cli, Command, ConfigError, CreateUserArgs, DatabaseConfig, RoleArg, SeedArgs};
use crate::db::Database;

/// Demo credentials created by `seed --demo`, documented in the README.
pub const DEMO_ADMIN: (&str, &str) = ("admin@example.com", "admin-password");
pub const DEMO_CUSTOMER: (&str, &str) = ("customer@example.com", "customer-password");

/// Why a command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// Whether a setting was refused (rather than something failing while running).
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Start(StartError::Config(_)))
    }
}

impl From<passwords::HashingFailed> for CliError {
    fn from(error: passwords::HashingFailed) -> Self {
        Self::Failed(error.to_string())
    }
}

impl From<crate::db::DbError> for CliError {
    fn from(error: crate::db::DbError) -> Self {
        Self::Failed(format!("database error: {error}"))
    }
}

impl From<crate::db::MigrateError> for CliError {
    fn from(error: crate::db::MigrateError) -> Self {
        Self::Failed(format!("database migration failed: {error}"))
    }
}

/// Parses the command line; a bad setting is reported as one line naming it.
pub fn parse() -> Result<Cli, String> {
    use clap::Parser;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) if matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) => {
            Err(describe_invalid_setting(&error))
        }
        Err(error) => error.exit(),
    }
}

fn describe_invalid_setting(error: &clap::Error) -> String {
    let flag = error.get(ContextKind::InvalidArg).map(|arg| arg.to_string()).unwrap_or_default();
    let long = flag.split_whitespace().next().unwrap_or_default().trim_start_matches("--").to_owned();
    let env = env_name_of(&Cli::command(), &long);
    let rendered = error.render().to_string();
    let reason = rendered.lines().next().unwrap_or_default().trim_start_matches("error: ");
    match env {
        Some(env) => format!("invalid configuration: {env} (--{long}): {reason}"),
        None => format!("invalid configuration: {reason}"),
    }
}

fn env_name_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_name_of(sub, long)))
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(config) => {
            let telemetry = crate::telemetry::init(config.log_format, &config.tracing, "api")?;
            let application = Application::build(*config).await?;
            tracing::info!(address = %application.local_addr(), "orderly is listening");
            let stopped = application.run_until_stopped(shutdown_signal()).await;
            telemetry.shutdown().await;
            stopped.map_err(|e| CliError::Failed(format!("server error: {e}")))
        }
        Command::Worker(config) => {
            let telemetry = crate::telemetry::init(config.log_format, &config.tracing, "worker")?;
            let worker = Application::build_as(*config, Process::Worker).await?;
            tracing::info!(address = %worker.local_addr(), "orderly worker is running");
            let stopped = worker.run_until_stopped(shutdown_signal()).await;
            telemetry.shutdown().await;
            stopped.map_err(|e| CliError::Failed(format!("worker error: {e}")))
        }
        Command::Migrate(database) => {
            let db = Database::connect(&database).await?;
            db.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin { command: AdminCommand::CreateUser(args) } => create_user(args).await,
        Command::Seed(args) => seed(args).await,
    }
}

async fn connect_migrated(database: &DatabaseConfig) -> Result<Database, CliError> {
    let db = Database::connect(database).await?;
    db.migrate().await?;
    Ok(db)
}

async fn create_user(args: CreateUserArgs) -> Result<(), CliError> {
    let password = match std::env::var("ORDERLY_ADMIN_PASSWORD") {
        Ok(password) => password,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::Failed(format!("cannot read the password from stdin: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let invalid = |field: &str, message: &str| CliError::Failed(format!("{field}: {message}"));
    let email = Email::parse(args.email.trim()).map_err(|e| invalid("--email", e))?;
    let password = Password::parse(&password).map_err(|e| invalid("password", e))?;
    let name = UserName::parse(&args.name).map_err(|e| invalid("--name", e))?;
    let role = match args.role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Customer => Role::Customer,
    };
    let db = connect_migrated(&args.database).await?;
    let user = register(&db, email, password, name, role).await?;
    println!("created {} user {} ({})", role.as_str(), user.email, user.id);
    Ok(())
}

async fn register(
    db: &Database,
    email: Email,
    password: Password,
    name: UserName,
    role: Role,
) -> Result<accounts_store::User, CliError> {
    let address = email.as_str().to_owned();
    if db.write().run(async move |conn| accounts_store::find_user_by_email(conn, &address).await).await?.is_some() {
        return Err(CliError::Failed(format!("a user with email {} already exists", email.as_str())));
    }
    let new = accounts_store::NewUser {
        email: email.as_str().to_owned(),
        name: name.into_inner(),
        role,
        password_hash: passwords::hash(password).await?,
    };
    Ok(db.write().transaction(async move |conn| accounts_store::insert_user(conn, new).await).await?)
}

/// Demo products: (sku, name, description, unit price in cents, stock).
const DEMO_PRODUCTS: &[(&str, &str, &str, i64, i64)] = &[
    ("TEE-BLK-M", "Black T-shirt, M", "Organic cotton crew neck.", 1999, 120),
    ("TEE-WHT-M", "White T-shirt, M", "Organic cotton crew neck.", 1999, 80),
    ("HOODIE-GRY-L", "Grey hoodie, L", "Brushed fleece, kangaroo pocket.", 4900, 40),
    ("MUG-12OZ", "Enamel mug", "12 oz, dishwasher safe.", 1400, 200),
    ("BOTTLE-750", "Steel bottle", "750 ml, keeps drinks cold for 24 h.", 2900, 75),
    ("CAP-NAVY", "Navy cap", "Six-panel, adjustable strap.", 2200, 60),
    ("SOCKS-3P", "Socks, 3 pairs", "Merino blend.", 1800, 150),
    ("TOTE-CANVAS", "Canvas tote", "Heavy canvas, long handles.", 1600, 90),
    ("NOTEBOOK-A5", "A5 notebook", "Dotted, 192 pages.", 1200, 300),
    ("PEN-GEL-BLK", "Gel pen, black", "0.5 mm, refillable.", 350, 500),
    ("STICKERS-10", "Sticker pack", "Ten vinyl stickers.", 600, 400),
    ("POSTER-A2", "Poster A2", "Matte print.", 2500, 30),
    ("KEYRING", "Brass keyring", "Solid brass.", 900, 250),
    ("BEANIE-BLK", "Black beanie", "Ribbed knit.", 2000, 70),
    ("UMBRELLA", "Compact umbrella", "Windproof, auto open.", 3200, 45),
    ("BACKPACK-20L", "Backpack 20 L", "Water-resistant, laptop sleeve.", 8900, 25),
    ("LAPTOP-SLEEVE", "Laptop sleeve 14\"", "Felt with leather strap.", 3900, 35),
    ("DESK-MAT", "Desk mat", "90 x 40 cm.", 2700, 50),
    ("CABLE-USBC", "USB-C cable", "2 m, braided.", 1500, 220),
    ("CHARGER-65W", "65 W charger", "GaN, two ports.", 4500, 0),
    ("RETIRED-TEE", "Retired T-shirt", "No longer sold.", 1500, 10),
];

async fn seed(args: SeedArgs) -> Result<(), CliError> {
    let db = connect_migrated(&args.database).await?;
    for (email, password, name, role) in [
        (DEMO_ADMIN.0, DEMO_ADMIN.1, "Demo Admin", Role::Admin),
        (DEMO_CUSTOMER.0, DEMO_CUSTOMER.1, "Demo Customer", Role::Customer),
    ] {
        if db.write().run(async move |conn| accounts_store::find_user_by_email(conn, email).await).await?.is_some() {
            println!("user {email} already exists");
            continue;
        }
        let parse_error = |_| CliError::Failed("demo data is invalid".into());
        let email = Email::parse(email).map_err(parse_error)?;
        let password = Password::parse(password).map_err(parse_error)?;
        let name = UserName::parse(name).map_err(parse_error)?;
        register(&db, email, password, name, role).await?;
    }
    let mut created = 0;
    for (sku, name, description, unit_price, stock) in DEMO_PRODUCTS {
        let new = catalog_store::NewProduct {
            sku: (*sku).to_owned(),
            name: (*name).to_owned(),
            description: (*description).to_owned(),
            unit_price: *unit_price,
            currency: "USD",
            stock: *stock,
            active: !sku.starts_with("RETIRED"),
        };
        match db.write().run(async move |conn| catalog_store::insert_product(conn, new).await).await {
            Ok(_) => created += 1,
            Err(error) if error.is_unique_violation() => {}
            Err(error) => return Err(error.into()),
        }
    }
    println!(
        "demo data ready: admin {} / {}, customer {} / {}, {created} new products",
        DEMO_ADMIN.0, DEMO_ADMIN.1, DEMO_CUSTOMER.0, DEMO_CUSTOMER.1
    );
    Ok(())
}
