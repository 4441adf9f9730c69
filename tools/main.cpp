// fetalhc command-line interface: builds the CLI11 app from the subcommand files and runs the one
// that was given. Exit codes (cli.h): 0 everything measured, 1 some inputs failed, 2 usage error.
#include "cli.h"

#include <CLI/CLI.hpp>

int main(int argc, char** argv) {
    using namespace fetalhc_cli;
    silence_library_logging();

    CLI::App app{"fetalhc - fetal head circumference (HC) from 2D ultrasound images"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("fetalhc ") + FETALHC_VERSION_STRING);

    Commands commands;
    add_measure_command(app, commands);
    add_evaluate_command(app, commands);
    add_dataset_command(app, commands);
    add_model_command(app, commands);
    add_train_command(app, commands);
    add_serve_command(app, commands);
    add_bench_command(app, commands);
    add_dicom_command(app, commands);
    add_train_head_check_command(app, commands);
    add_user_command(app, commands);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? kExitOk : kExitUsage;
    }
    for (const Command& c : commands)
        if (c.app->parsed()) return c.run();
    return kExitUsage;
}
