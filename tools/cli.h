// What the fetalhc subcommands share: exit codes, messages, the default model and the checks and
// options several commands take. Each subcommand lives in its own file and registers itself with
// an add_*_command function; tools/main.cpp only builds the app and runs the command that was given.
//
// Error policy (one place): results go to stdout, "error: ..." and "note: ..." lines to stderr,
// exit 0 when everything worked, 1 when some inputs failed, 2 on a usage error (including a model
// file that cannot be read). A batch goes on past a bad input. A library error is printed with
// cli_message (its message, then the option of its field: "(--pixel-size MM)"), and a command that
// stops on one exits with exit_code(kind): the two tables are in cli_errors.cpp.
#pragma once

#include "fetalhc/expected.h"
#include "fetalhc/head_check.h"
#include "fetalhc/segmenter.h"

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fetalhc_cli {

constexpr int kExitOk = 0, kExitSomeFailed = 1, kExitUsage = 2;

// "error: MSG" / "note: MSG" on stderr (a progress line showing there is cleared first).
void error(const std::string& msg);
void note(const std::string& msg);

// The exit code of a command that stops on a library error of this kind: kExitUsage when the
// command line must change (a bad option value, a model that cannot be used, a named file or
// folder that is not there), else kExitSomeFailed. A batch's failed input is kExitSomeFailed
// whatever its kind.
int exit_code(fetalhc::ErrorKind kind);
// The option a library error's field stands for ("pixel_size" -> "--pixel-size MM"), or "" when
// the CLI has none.
std::string option_for_field(const std::string& field);
// The error's message, with the option of its field when there is one: "...; give a pixel size
// (--pixel-size MM)".
std::string cli_message(const fetalhc::Error& e);
// Prints "error: " + cli_message(e) and returns exit_code(e.kind).
int fail(const fetalhc::Error& e);

// $FETALHC_MODEL when set, else the shipped model (an absolute path into the source tree).
std::string default_model();

// Checks before loading that `path` is a readable model file. On a problem prints an error that
// names the file and says what to do (--model PATH, FETALHC_MODEL, the shipped model) and returns
// false.
bool check_model_file(const std::string& path);
// The problem alone ("" when the file is readable), for commands whose models are not --model.
std::string model_file_problem(const std::string& path);

// Bounds a thread or worker count given as `option` (0 means one per core and stays 0): a negative
// value prints a usage error and returns false; a value above the number of cores is lowered to
// it with a note on stderr.
bool bound_thread_count(int& value, const std::string& option);

// Keeps third-party logging (OpenCV and its video backends) off stderr, so that
// only fetalhc's own messages reach it. Call once, first thing in main().
void silence_library_logging();

// A registered leaf subcommand and what runs it (returns the exit code).
struct Command {
    CLI::App* app;
    std::function<int()> run;
};
using Commands = std::vector<Command>;

// Options several commands share.
CLI::Option* add_model_option(CLI::App* cmd, std::string& model);
CLI::Option* add_quiet_flag(CLI::App* cmd, bool& quiet);
// --ensemble DIR (the fold models of a k-fold run), excluding --model.
CLI::Option* add_ensemble_option(CLI::App* cmd, std::string& dir);
// The model to measure with: the ensemble in `ensemble_dir` when given, else the file `model`.
// Prints the error (naming the file or folder) and returns nullopt when it cannot be loaded.
std::optional<fetalhc::Segmenter> load_segmenter(const std::string& model, const std::string& ensemble_dir,
                                                 const fetalhc::SegmenterOptions& options);
// --head-check PATH|none: the head check scoring every measured outline (fetalhc/head_check.h);
// default "": fetalhc_head_check.pt beside --model.
CLI::Option* add_head_check_option(CLI::App* cmd, std::string& choice);
// The head check chosen with --head-check for the model file `model` (head_check_for_model).
// Prints the error and returns false when a check asked for cannot be loaded; prints a note when
// the default one is absent (every outline is then measured as a head).
bool load_head_check(const std::string& choice, const std::string& model, std::optional<fetalhc::HeadCheck>& out);
// --mirror: the second pass averages each crop with its mirror image (SegmenterOptions::mirror_average).
CLI::Option* add_mirror_flag(CLI::App* cmd, bool& mirror);
// --int8: both networks in 8 bits (SegmenterOptions::int8).
CLI::Option* add_int8_flag(CLI::App* cmd, bool& int8);
// --single-look: no targeted second opinion (MeasureOptions::targeted_second_opinion), to compare.
CLI::Option* add_single_look_flag(CLI::App* cmd, bool& single_look);

// One per subcommand file.
void add_measure_command(CLI::App& app, Commands& commands);   // measure.cpp
void add_evaluate_command(CLI::App& app, Commands& commands);  // evaluate.cpp
void add_model_command(CLI::App& app, Commands& commands);     // model.cpp: calibrate, average, combine
void add_dataset_command(CLI::App& app, Commands& commands);   // dataset.cpp: coco
void add_train_command(CLI::App& app, Commands& commands);     // train.cpp
void add_serve_command(CLI::App& app, Commands& commands);     // serve.cpp
void add_bench_command(CLI::App& app, Commands& commands);     // bench.cpp
void add_dicom_command(CLI::App& app, Commands& commands);     // dicom.cpp: info
void add_train_head_check_command(CLI::App& app, Commands& commands);
void add_user_command(CLI::App& app, Commands& commands);      // user.cpp: user add/list/revoke/rotate, audit export  // head_check.cpp

}  // namespace fetalhc_cli
