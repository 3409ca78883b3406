//! The `pva-worker` command line: parse, load settings, start logging, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pva_worker::config::{LogFormat, Settings};
use pva_worker::job::JobStatus;
use pva_worker::telemetry::Telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "pva-worker",
    version,
    about = "Personalized face inpainting (PVA) worker"
)]
struct Cli {
    /// Settings file layered over the embedded defaults (then PVA__SECTION__KEY variables).
    #[arg(long, global = true, env = "PVA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one job JSON on local files (the embedded default: no broker, no S3).
    Edit {
        /// The job file (same schema as the queue's jobs).
        job: PathBuf,
        /// Directory the job's keys are relative to (default: the job file's directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Where outputs and result.json go.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Also write a contact sheet (references | input with mask | outputs with scores).
        #[arg(long)]
        contact_sheet: Option<PathBuf>,
    },
    /// Consume jobs from RabbitMQ, read and write images in S3, publish results (the service).
    Serve,
    /// Delete everything stored for an identity (its tuned adapters) and list what was removed.
    Forget {
        /// The identity's id.
        #[arg(long)]
        identity: String,
    },
    /// Try the service end to end: upload a local job's images, publish it, wait, download outputs.
    Enqueue {
        /// The job file; its keys are paths relative to --root.
        job: PathBuf,
        /// Directory the job's keys are relative to (default: the job file's directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Where the outputs are downloaded.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Seconds to wait for the result.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The W3C traceparent of the caller's trace (`00-<trace id>-<span id>-<flags>`), sent
        /// with the job so that the worker's spans join it; without it, a new trace.
        #[arg(long)]
        traceparent: Option<String>,
    },
    /// Tune an identity's adapter from local reference photos and write it (safetensors).
    Tune {
        /// The identity's id (part of the adapter's storage key).
        #[arg(long)]
        identity: String,
        /// A reference photo of the identity (repeat for 1..=5 references).
        #[arg(long = "reference", required = true)]
        references: Vec<PathBuf>,
        /// Face box `x,y,w,h` of each reference in order, `none` for an aligned square face, or
        /// `find` to find its one clear face; give one per reference, or leave out to find every
        /// reference's face (as a job's references without a face box).
        #[arg(long = "face-box")]
        face_boxes: Vec<pva_worker::commands::tune::FaceBoxArg>,
        /// Where the adapter file goes.
        #[arg(long)]
        out: PathBuf,
        /// Tuning steps (default: tuning.steps).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed of the draws (default: tuning.seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Write the JSON Schemas of the job, result and event messages (with this worker's limits).
    Schema {
        /// The directory they are written to.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// Print an image's provenance (C2PA manifest, actions, source type, XMP); exit 0 only when valid.
    Verify {
        /// The image (PNG, JPEG or WebP).
        file: PathBuf,
        /// PEM bundle of trusted root certificates (without it the signer is not checked).
        #[arg(long)]
        trust_anchors: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs (filtered by `logging.level`) and, beside them, the spans that become OpenTelemetry spans
/// (their own filter: a quiet log level keeps job traces and trace ids).
fn init_logging(settings: &Settings, telemetry: &Telemetry) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.logging.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = json_logs(settings);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.layer())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pva-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match Telemetry::new(&settings.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pva-worker: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings, &telemetry);
    let code = match run(cli.command, &settings) {
        Ok(code) => code,
        Err(e) => {
            let message = describe(&e);
            // Said once: as a JSON log line where the logs are JSON (a log collector reads them),
            // else as one plain line (the log line would repeat it on the same terminal).
            if json_logs(&settings) {
                tracing::error!(error = %message, "pva-worker failed");
            } else {
                eprintln!("pva-worker: {message}");
            }
            ExitCode::FAILURE
        }
    };
    // The spans not yet exported go now (bounded by telemetry.export_timeout_secs).
    if let Err(e) = telemetry.shutdown() {
        tracing::warn!(error = %e, "spans lost at exit");
    }
    code
}

/// Whether the logs go out as JSON (`logging.format`, `auto`: when stderr is not a terminal).
fn json_logs(settings: &Settings) -> bool {
    use std::io::IsTerminal;
    match settings.logging.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    }
}

/// An error and its causes on one line, each said once: most errors here already include their
/// source's text in their own message, so a cause whose text is already there is left out.
fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(command: Command, settings: &Settings) -> anyhow::Result<ExitCode> {
    // The one tokio runtime; CPU-bound commands run on its blocking threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(command, settings.clone()))
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    use pva_worker::commands;
    let settings = &settings;
    match command {
        Command::Enqueue {
            job,
            root,
            out,
            timeout,
            traceparent,
        } => {
            let options = commands::enqueue::EnqueueOptions {
                job,
                root,
                out,
                timeout: std::time::Duration::from_secs(timeout),
                traceparent,
            };
            let result = commands::enqueue::run(settings, &options).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(match result.status {
                JobStatus::Succeeded => ExitCode::SUCCESS,
                JobStatus::Failed => ExitCode::from(3),
            })
        }
        Command::Forget { identity } => {
            let store = pva_worker::storage::s3::S3Store::new(&settings.s3).await?;
            let (bucket, removed) = commands::forget::forget(settings, &store, &identity).await?;
            for key in &removed {
                println!("removed {bucket}/{key}");
            }
            println!(
                "forgot identity `{identity}`: {} object(s) removed",
                removed.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { out } => {
            for path in commands::schema::write_schemas(settings, &out)? {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let store = pva_worker::storage::s3::S3Store::new(&settings.s3).await?;
            pva_worker::service::run(settings.clone(), store).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tune {
            identity,
            references,
            face_boxes,
            out,
            steps,
            seed,
        } => {
            let options = commands::tune::TuneCmdOptions {
                identity,
                references,
                face_boxes,
                out,
                steps,
                seed,
            };
            let settings = settings.clone();
            let report = tokio::task::spawn_blocking(move || {
                commands::tune::run(&settings, &options, &mut std::io::stdout())
            })
            .await??;
            for (stage, secs) in &report.timings {
                println!("{stage:>12}: {secs:8.3} s");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            file,
            trust_anchors,
            json,
        } => {
            let options = commands::verify::VerifyOptions {
                file,
                trust_anchors,
                json,
            };
            let report = commands::verify::run(&options, &mut std::io::stdout())?;
            // NOTE: 4, not 1: a file that is not valid is an answer, not a failure of the command.
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
        Command::Edit {
            job,
            root,
            out,
            contact_sheet,
        } => {
            let options = commands::edit::EditOptions {
                job,
                root,
                out,
                contact_sheet: contact_sheet.clone(),
            };
            let report = commands::edit::run(settings, &options).await?;
            print_edit(&report, contact_sheet.as_deref())
        }
    }
}

/// `edit`'s report on stdout; exit status 3 for a job that could not be done.
fn print_edit(
    report: &pva_worker::commands::edit::EditReport,
    contact_sheet: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let result = &report.result;
    println!("{:>12}: {:8.3} s", "model_load", report.model_load_secs);
    for (stage, secs) in &result.timings {
        println!("{stage:>12}: {secs:8.3} s");
    }
    if report.republished {
        println!(
            "job `{}` already has a stored result; answered from it (delete {} to run it again)",
            result.job_id,
            report.result_path.display()
        );
    }
    match result.status {
        JobStatus::Succeeded => {
            for (o, path) in result.outputs.iter().zip(&report.output_paths) {
                println!(
                    "wrote {} (identity score {:.3}{})",
                    path.display(),
                    o.identity_score,
                    if o.identity_check_passed {
                        ""
                    } else {
                        ", below the minimum"
                    }
                );
            }
            match contact_sheet {
                Some(sheet) if report.contact_sheet_written => {
                    println!("wrote contact sheet {}", sheet.display())
                }
                Some(_) => println!("no contact sheet: the stored result has no images in memory"),
                None => {}
            }
            println!("result: {}", report.result_path.display());
            Ok(ExitCode::SUCCESS)
        }
        JobStatus::Failed => {
            let e = result.error.as_ref().expect("a failed result has an error");
            println!("job failed: {} ({})", e.message, e.code);
            println!("result: {}", report.result_path.display());
            Ok(ExitCode::from(3))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read manifest.json: no such file");
        let e = e.context("loading the model");
        assert_eq!(
            describe(&e),
            "loading the model: cannot read manifest.json: no such file"
        );
    }
}
