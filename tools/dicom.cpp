// `fetalhc dicom info FILE... [--json]`: what a DICOM file holds and which calibration `measure`
// would use, from the header alone (works on files whose pixels cannot be decoded).
#include "cli.h"

#include "fetalhc/dicom.h"
#include "fetalhc/server.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

using nlohmann::json;

namespace fetalhc_cli {
namespace {

struct DicomInfoArgs {
    std::vector<std::string> paths;
    bool json = false;
};

json region_json(const fetalhc::UltrasoundRegion& r) {
    json j{{"index", r.index},
           {"box", {{"min_x", r.box.x}, {"min_y", r.box.y}, {"max_x", r.box.x + r.box.width - 1}, {"max_y", r.box.y + r.box.height - 1}}},
           {"spatial_format", r.spatial_format},
           {"data_type", r.data_type},
           {"units_x", r.units_x},
           {"units_y", r.units_y},
           {"physical_delta_x", r.delta_x},
           {"physical_delta_y", r.delta_y},
           {"tissue_2d_cm", r.is_tissue_2d_cm()}};
    if (r.is_tissue_2d_cm()) j.update({{"mm_per_px_x", r.delta_x * 10}, {"mm_per_px_y", r.delta_y * 10}});
    return j;
}

json header_json(const fetalhc::DicomHeader& h) {
    json regions = json::array();
    for (const auto& r : h.regions) regions.push_back(region_json(r));
    json j{{"file", h.path},
           {"transfer_syntax_uid", h.transfer_syntax_uid},
           {"transfer_syntax", h.transfer_syntax_name},
           {"decodable", h.can_decode},
           {"sop_class_uid", h.sop_class_uid},
           {"sop_class", h.sop_class_name},
           {"sop_instance_uid", h.sop_instance_uid},
           {"columns", h.columns},
           {"rows", h.rows},
           {"frames", h.frames},
           {"photometric_interpretation", h.photometric_interpretation},
           {"samples_per_pixel", h.samples_per_pixel},
           {"bits_allocated", h.bits_allocated},
           {"bits_stored", h.bits_stored},
           {"has_pixel_data", h.has_pixel_data},
           {"regions", regions}};
    if (h.pixel_spacing_mm) j["pixel_spacing_mm"] = {(*h.pixel_spacing_mm)[0], (*h.pixel_spacing_mm)[1]};
    if (h.imager_pixel_spacing_mm) j["imager_pixel_spacing_mm"] = {(*h.imager_pixel_spacing_mm)[0], (*h.imager_pixel_spacing_mm)[1]};
    auto c = fetalhc::choose_calibration(h, std::nullopt);
    if (c) {
        json cj{{"source", c->source}, {"mm_per_px_x", c->mm_per_px_x}, {"mm_per_px_y", c->mm_per_px_y},
                {"anisotropic", c->anisotropic()}};
        if (c->region) cj["region"] = *c->region;
        j["calibration"] = cj;
    } else {
        j["calibration"] = nullptr;
        j["calibration_error"] = c.error();
    }
    return j;
}

void print_text(const fetalhc::DicomHeader& h) {
    std::printf("%s\n", h.path.c_str());
    std::printf("  transfer syntax  %s (%s)%s\n", h.transfer_syntax_name.c_str(), h.transfer_syntax_uid.c_str(),
                h.can_decode ? "" : "  NOT DECODABLE here");
    std::printf("  SOP class        %s\n", (h.sop_class_name.empty() ? h.sop_class_uid : h.sop_class_name).c_str());
    std::printf("  image            %d x %d, %d frame%s, %s, %d bits allocated\n", h.columns, h.rows, h.frames,
                h.frames == 1 ? "" : "s", h.photometric_interpretation.c_str(), h.bits_allocated);
    if (!h.has_pixel_data) std::printf("  no pixel data\n");
    for (const auto& r : h.regions) {
        std::printf("  region %d         box (%d,%d)-(%d,%d)  format %d  type %d  units %d/%d  delta %g/%g", r.index, r.box.x,
                    r.box.y, r.box.x + r.box.width - 1, r.box.y + r.box.height - 1, r.spatial_format, r.data_type, r.units_x,
                    r.units_y, r.delta_x, r.delta_y);
        if (r.is_tissue_2d_cm()) std::printf("  = %.5f x %.5f mm/px (2D tissue, cm)", r.delta_x * 10, r.delta_y * 10);
        std::printf("\n");
    }
    if (h.pixel_spacing_mm) std::printf("  PixelSpacing     %g \\ %g mm\n", (*h.pixel_spacing_mm)[0], (*h.pixel_spacing_mm)[1]);
    if (h.imager_pixel_spacing_mm)
        std::printf("  ImagerPixelSpacing %g \\ %g mm\n", (*h.imager_pixel_spacing_mm)[0], (*h.imager_pixel_spacing_mm)[1]);
    std::printf("  measure uses     %s\n", fetalhc::describe_calibration(h).c_str());
}

int run_dicom_info(const DicomInfoArgs& a) {
    int failed = 0;
    json all = json::array();
    for (const auto& p : a.paths) {
        // Checked before DCMTK opens it: a named pipe would block the open.
        const std::string problem = fetalhc::regular_file_problem(p, "a DICOM file");
        auto h = problem.empty() ? fetalhc::read_dicom_header(p) : fetalhc::Expected<fetalhc::DicomHeader>(fetalhc::make_error(fetalhc::ErrorKind::ImageUnreadable, problem));
        if (!h) {
            error(cli_message(h.error_value()));
            ++failed;
            if (a.json) all.push_back({{"file", p}, {"error", h.error()}});
            continue;
        }
        if (a.json) all.push_back(header_json(*h));
        else print_text(*h);
    }
    if (a.json) std::printf("%s\n", all.dump(2).c_str());
    return failed ? kExitSomeFailed : kExitOk;
}

struct DicomEchoArgs {
    std::string target, aet = "FETALHC";
    double timeout_s = 10;
};

// `fetalhc dicom echo AET@HOST:PORT`: is the PACS (or modality) there and does it accept us?
int run_dicom_echo(const DicomEchoArgs& a) {
    auto ms = fetalhc::dicom_echo(a.target, a.aet, a.timeout_s);
    if (!ms) return error(cli_message(ms.error_value())), exit_code(ms.error_kind());
    std::printf("C-ECHO %s: ok in %.0f ms\n", a.target.c_str(), *ms);
    return kExitOk;
}

}  // namespace

void add_dicom_command(CLI::App& app, Commands& commands) {
    auto* dicom = app.add_subcommand("dicom", "DICOM files: what they hold and how they are calibrated");
    dicom->require_subcommand(1);
    auto a = std::make_shared<DicomInfoArgs>();
    auto* info = dicom->add_subcommand("info", "transfer syntax, size, frames, regions and the calibration `measure` uses "
                                               "(header only)");
    info->add_option("files", a->paths, "DICOM files")->required();
    info->add_flag("--json", a->json, "JSON array on stdout");
    commands.push_back({info, [a] { return run_dicom_info(*a); }});
    auto e = std::make_shared<DicomEchoArgs>();
    auto* echo = dicom->add_subcommand("echo", "C-ECHO a PACS or modality (as `serve --dicom-forward` will reach it); exit 0 when it answers");
    echo->add_option("target", e->target, "AET@HOST:PORT, e.g. PACS@10.0.0.5:104")->required();
    echo->add_option("--aet", e->aet, "our AE title (as serve --dicom-aet)")->capture_default_str();
    echo->add_option("--timeout", e->timeout_s, "seconds to wait for the connection and each answer")
        ->check(CLI::Range(1.0, 120.0))
        ->capture_default_str();
    commands.push_back({echo, [e] { return run_dicom_echo(*e); }});
}

}  // namespace fetalhc_cli
