// `fetalhc dataset ...`: data set tools (COCO export of the HC18 masks).
#include "cli.h"

#include "fetalhc/fetalhc.h"

#include <cstdio>
#include <fstream>

namespace fetalhc_cli {
namespace {

int run_coco(const std::string& data, const std::string& out) {
    auto recs = fetalhc::read_hc18_training(data);
    if (!recs) return fail(recs.error_value());
    auto j = fetalhc::coco_annotations_json(*recs);
    if (!j) return fail(j.error_value());
    std::ofstream o(out);
    if (!(o << *j)) return error("cannot write '" + out + "'"), kExitSomeFailed;
    std::fprintf(stderr, "wrote %zu images to %s\n", recs->size(), out.c_str());
    return kExitOk;
}

}  // namespace

void add_dataset_command(CLI::App& app, Commands& commands) {
    auto data = std::make_shared<std::string>(), out = std::make_shared<std::string>();
    auto* ds = app.add_subcommand("dataset", "data set tools");
    ds->require_subcommand(1);
    auto* coco = ds->add_subcommand("coco", "export HC18 masks as COCO instance-segmentation annotations");
    coco->add_option("--data", *data, "HC18-layout folder")->required();
    coco->add_option("--out", *out, "annotations JSON to write")->required();
    commands.push_back({coco, [data, out] { return run_coco(*data, *out); }});
}

}  // namespace fetalhc_cli
