/* A stand-in for the two things libnvinfer gives a plugin library: the plugin registry and the
 * logger. It lets glue_check.cpp drive SparsePrefillAttentionPlugin.cpp through TensorRT's public
 * headers (vtables and all) on a machine without TensorRT. loadLibrary behaves as TensorRT's is
 * documented and observed to: dlopen, setLoggerFinder, getCreators, and refuse the library if one
 * of its creators is already registered. Test code only; never linked into the product. */
#include <dlfcn.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "mock_nvinfer.h"

namespace {

using namespace nvinfer1;

std::string key_of(IPluginCreatorInterface& creator, const char* plugin_namespace) {
  auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
  return std::string(plugin_namespace) + "::" + v3.getPluginName() + "::" + v3.getPluginVersion();
}

class MockLogger final : public ILogger {
 public:
  void log(Severity severity, const AsciiChar* message) noexcept override {
    if (severity <= Severity::kWARNING) messages.emplace_back(message);
  }
  std::vector<std::string> messages;
};

class MockLoggerFinder final : public ILoggerFinder {
 public:
  explicit MockLoggerFinder(ILogger* logger) : logger_(logger) {}
  ILogger* findLogger() noexcept override { return logger_; }

 private:
  ILogger* logger_;
};

MockLogger logger;
MockLoggerFinder finder(&logger);

class MockRegistry final : public IPluginRegistry {
 public:
  bool registerCreator(IPluginCreatorInterface& creator, const AsciiChar* const plugin_namespace) noexcept override {
    const std::string key = key_of(creator, plugin_namespace);
    if (creators_.count(key) != 0) return false;
    creators_[key] = &creator;
    return true;
  }
  IPluginCreatorInterface* getCreator(const AsciiChar* const name, const AsciiChar* const version,
                                      const AsciiChar* const plugin_namespace) noexcept override {
    const auto found = creators_.find(std::string(plugin_namespace) + "::" + name + "::" + version);
    return found == creators_.end() ? nullptr : found->second;
  }
  bool deregisterCreator(const IPluginCreatorInterface& creator) noexcept override {
    for (auto it = creators_.begin(); it != creators_.end(); ++it) {
      if (it->second == &creator) {
        creators_.erase(it);
        return true;
      }
    }
    return false;
  }
  PluginLibraryHandle loadLibrary(const AsciiChar* path) noexcept override {
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) return fail(std::string("dlopen failed: ") + dlerror());
    using SetFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    if (auto set_finder = reinterpret_cast<SetFinder>(dlsym(handle, "setLoggerFinder"))) set_finder(&finder);
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    if (get_creators == nullptr) return fail("SymbolAddress for getCreators could not be loaded");
    int32_t count = 0;
    IPluginCreatorInterface* const* list = get_creators(count);
    for (int32_t i = 0; i < count; ++i) {
      auto& v3 = static_cast<IPluginCreatorV3One&>(*list[i]);
      if (getCreator(v3.getPluginName(), v3.getPluginVersion(), v3.getPluginNamespace()) != nullptr) {
        return fail(std::string("Cannot register the library as plugin creator of ") + v3.getPluginName() +
                    " exists already.");
      }
    }
    for (int32_t i = 0; i < count; ++i) {
      registerCreator(*list[i], static_cast<IPluginCreatorV3One&>(*list[i]).getPluginNamespace());
    }
    return handle;
  }

  /* The rest of the interface, unused by the plugin: trivial. Not marked override: the set of pure
   * virtuals differs between TensorRT 10.x and 11.x, and extra ones are harmless. */
  bool registerCreator(IPluginCreator&, const AsciiChar* const) noexcept { return false; }
  IPluginCreator* const* getPluginCreatorList(int32_t* const count) const noexcept { return *count = 0, nullptr; }
  IPluginCreator* getPluginCreator(const AsciiChar* const, const AsciiChar* const, const AsciiChar* const) noexcept {
    return nullptr;
  }
  bool deregisterCreator(const IPluginCreator&) noexcept { return false; }
  void setErrorRecorder(IErrorRecorder* const) noexcept override {}
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(const bool) override {}
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  IPluginCreatorInterface* const* getAllCreators(int32_t* const count) const noexcept override {
    return *count = 0, nullptr;
  }
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const count) noexcept { return *count = 0, nullptr; }
  IPluginResource* acquirePluginResource(const AsciiChar*, IPluginResource*) noexcept override { return nullptr; }
  int32_t releasePluginResource(const AsciiChar*) noexcept override { return 0; }

 private:
  PluginLibraryHandle fail(const std::string& message) {
    logger.log(ILogger::Severity::kERROR, message.c_str());
    return nullptr;
  }
  std::map<std::string, IPluginCreatorInterface*> creators_;
};

}  // namespace

extern "C" MINFER_MOCK_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
  static MockRegistry registry;
  return &registry;
}

extern "C" MINFER_MOCK_EXPORT nvinfer1::ILogger* getLogger() noexcept { return &logger; }

const std::vector<std::string>& mock_logged_messages() { return logger.messages; }
