#include "cli.h"

#include "progress.h"

#include "fetalhc/image_io.h"

#include <opencv2/core/utils/logger.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

namespace fs = std::filesystem;

namespace fetalhc_cli {

namespace {

// The model beside an installed CLI (cmake --install): <prefix>/share/fetalhc/models.
std::string installed_model() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return "";
    const fs::path p = exe.parent_path().parent_path() / "share" / "fetalhc" / "models" / "fetalhc_unet.pt";
    return fs::exists(p, ec) ? p.string() : "";
}

// The shipped model: the copy installed beside the CLI when it runs from an install prefix, else
// the source tree's models/ folder (a CLI run from the build tree).
std::string shipped_model() {
    if (auto p = installed_model(); !p.empty()) return p;
#ifdef FETALHC_DEFAULT_MODEL
    return FETALHC_DEFAULT_MODEL;
#else
    return "models/fetalhc_unet.pt";
#endif
}

}  // namespace

void error(const std::string& msg) {
    Progress::clear_showing();
    std::fprintf(stderr, "error: %s\n", msg.c_str());
}

void note(const std::string& msg) {
    Progress::clear_showing();
    std::fprintf(stderr, "note: %s\n", msg.c_str());
}

int fail(const fetalhc::Error& e) {
    error(cli_message(e));
    return exit_code(e.kind);
}

std::string default_model() {
    if (const char* env = std::getenv("FETALHC_MODEL")) return env;
    return shipped_model();
}

std::string model_file_problem(const std::string& path) {
    if (path.empty()) return "no model file given";
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (st.type() == fs::file_type::not_found) return "model file '" + path + "' not found";
    if (fs::is_directory(st)) return "'" + path + "' is a folder, not a model file";
    // A device, a named pipe (whose open would block), a symlink loop (ELOOP), permission denied:
    // named before any open.
    if (auto p = fetalhc::regular_file_problem(path, "a model file"); !p.empty()) return p;
    std::ifstream f(path, std::ios::binary);
    if (!f) return "model file '" + path + "' cannot be read (" + std::strerror(errno) + ")";
    return "";
}

bool check_model_file(const std::string& path) {
    const std::string problem = model_file_problem(path);
    if (problem.empty()) return true;
    const char* env = std::getenv("FETALHC_MODEL");
    const bool from_env = env && path == env;
    std::string what = problem + (from_env ? " (the FETALHC_MODEL setting)" : "");
    if (path == shipped_model())
        what += ": the shipped model is missing; restore models/fetalhc_unet.pt, or pass --model PATH or set FETALHC_MODEL";
    else
        what += std::string(": pass --model PATH or ") + (from_env ? "fix" : "set") +
                " FETALHC_MODEL; the shipped model is " + shipped_model();
    error("cannot load model: " + what);
    return false;
}

bool bound_thread_count(int& value, const std::string& option) {
    if (value < 0) {
        error(option + " must be 0 (one per core) or a positive count, got " + std::to_string(value));
        return false;
    }
    const int cores = int(std::thread::hardware_concurrency());
    if (cores > 0 && value > cores) {
        note(option + " " + std::to_string(value) + " is more than the " + std::to_string(cores) +
             " cores of this machine; using " + std::to_string(cores));
        value = cores;
    }
    return true;
}

void silence_library_logging() {
    // The video backends read the environment when first used, so it is set before anything
    // opens a video. A user's own setting wins (to debug a video that will not open, run with
    // OPENCV_LOG_LEVEL=INFO OPENCV_FFMPEG_LOGLEVEL=32; OpenCV then prints FFmpeg's lines on stdout).
    // Both are needed: OPENCV_LOG_LEVEL quiets OpenCV and GStreamer ("GStreamer warning: ..."),
    // OPENCV_FFMPEG_LOGLEVEL FFmpeg's decoders ("[h264 @ 0x...] error while decoding MB ...").
    const bool user_log_level = std::getenv("OPENCV_LOG_LEVEL") != nullptr;
    setenv("OPENCV_LOG_LEVEL", "SILENT", 0);
    setenv("OPENCV_VIDEOIO_DEBUG", "0", 0);
    setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);  // AV_LOG_QUIET
    if (!user_log_level) cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    // libpng's own messages are kept off stderr by the library, which decodes every PNG itself
    // (src/png_decode.cpp).
}

CLI::Option* add_model_option(CLI::App* cmd, std::string& model) {
    model = default_model();
    return cmd->add_option("--model", model, "model file (or set FETALHC_MODEL)")->capture_default_str();
}

CLI::Option* add_ensemble_option(CLI::App* cmd, std::string& dir) {
    return cmd->add_option("--ensemble", dir,
                           "measure with the fold models of a k-fold run (DIR/fold<i>/model.pt) averaged, instead of --model");
}

CLI::Option* add_head_check_option(CLI::App* cmd, std::string& choice) {
    return cmd->add_option("--head-check", choice,
                           "head-check model: refuses outlines that are not a fetal head in the HC plane (not_a_head_plane) "
                           "and flags doubtful ones; 'none' to measure every image as a head (default: " +
                               std::string(fetalhc::kHeadCheckFileName) + " beside --model)");
}

bool load_head_check(const std::string& choice, const std::string& model, std::optional<fetalhc::HeadCheck>& out) {
    std::string missing;
    auto c = fetalhc::head_check_for_model(choice, model, &missing);
    if (!c) return error(cli_message(c.error_value()) + " (--head-check; 'none' measures without it)"), false;
    if (!missing.empty())
        note("no head check at '" + missing + "': every outline is measured as a head (--head-check PATH to give one)");
    out = std::move(*c);
    return true;
}

CLI::Option* add_mirror_flag(CLI::App* cmd, bool& mirror) {
    return cmd->add_flag("--mirror", mirror,
                         "second pass: also segment each crop mirrored left-right and average the two (about a third "
                         "more time per image; out-of-fold HC error 1.89 instead of 1.93 mm)");
}

CLI::Option* add_int8_flag(CLI::App* cmd, bool& int8) {
    return cmd->add_flag("--int8", int8,
                         "run both networks in 8 bits (the model must hold int8 ranges: `fetalhc model quantize`); "
                         "fastest on CPUs with VNNI");
}

CLI::Option* add_single_look_flag(CLI::App* cmd, bool& single_look) {
    return cmd->add_flag("--single-look", single_look,
                         "no targeted second opinion: one path for every image (by default, with a head check, a small "
                         "head, a doubtful score or a second head-like region gets extra passes)");
}

std::optional<fetalhc::Segmenter> load_segmenter(const std::string& model, const std::string& ensemble_dir,
                                                 const fetalhc::SegmenterOptions& options) {
    if (options.int8 && !fetalhc::cpu_has_vnni())
        note("--int8 on a CPU without 8-bit dot products (VNNI): it may be no faster than the float path here");
    if (ensemble_dir.empty()) {
        if (!check_model_file(model)) return std::nullopt;
        auto seg = fetalhc::Segmenter::load(model, options);
        if (!seg) return error(cli_message(seg.error_value())), std::nullopt;
        return *seg;
    }
    auto files = fetalhc::ensemble_model_files(ensemble_dir);
    if (!files) return error(cli_message(files.error_value())), std::nullopt;
    for (const auto& f : *files)
        if (auto problem = model_file_problem(f); !problem.empty()) return error("ensemble member: " + problem), std::nullopt;
    auto seg = fetalhc::Segmenter::load_ensemble(*files, options);
    if (!seg) return error(cli_message(seg.error_value())), std::nullopt;
    return *seg;
}

CLI::Option* add_quiet_flag(CLI::App* cmd, bool& quiet) {
    return cmd->add_flag("-q,--quiet", quiet,
                         "no progress line on stderr (it is shown only when stderr is a terminal)");
}

}  // namespace fetalhc_cli
